#!/usr/bin/env bash
# Starts a real OpenSSH server on 127.0.0.1 (port FLOTILLA_TEST_SSH_PORT,
# default 2222) that accepts a fresh key, for testing the SSH channel. Needs
# Debian's openssh-server. Prints the environment the tests read (eval it):
# port, user, key file and a known_hosts file holding the server's key.
# Remote commands see SLURM_CONF if it is set when this runs.
set -euo pipefail
infra=${FLOTILLA_TEST_INFRA:-/tmp/flotilla-test-infra}
root=$infra/sshd
port=${FLOTILLA_TEST_SSH_PORT:-2222}
here=$(cd "$(dirname "$0")" && pwd)
"$here/sshd-down.sh" >/dev/null 2>&1 || true
mkdir -p "$root" /run/sshd
chmod 700 "$root"
[ -f "$root/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$root/host_ed25519"
[ -f "$root/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$root/client_ed25519"
cp "$root/client_ed25519.pub" "$root/authorized_keys"
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$root/host_ed25519.pub")" > "$root/known_hosts"
{
    echo "Port $port"
    echo "ListenAddress 127.0.0.1"
    echo "HostKey $root/host_ed25519"
    echo "AuthorizedKeysFile $root/authorized_keys"
    echo "StrictModes no"
    echo "PermitRootLogin prohibit-password"
    echo "PasswordAuthentication no"
    echo "KbdInteractiveAuthentication no"
    echo "UsePAM no"
    echo "PidFile $root/sshd.pid"
    echo "Subsystem sftp internal-sftp"
    if [ -n "${SLURM_CONF:-}" ]; then echo "SetEnv SLURM_CONF=$SLURM_CONF"; fi
} > "$root/sshd_config"
/usr/sbin/sshd -f "$root/sshd_config" -E "$root/sshd.log"
deadline=$((SECONDS + 20))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if [ "$SECONDS" -gt "$deadline" ]; then
        echo "sshd did not start; see $root/sshd.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "export FLOTILLA_TEST_SSH_PORT=$port"
echo "export FLOTILLA_TEST_SSH_USER=$(id -un)"
echo "export FLOTILLA_TEST_SSH_KEY=$root/client_ed25519"
echo "export FLOTILLA_TEST_SSH_KNOWN_HOSTS=$root/known_hosts"
