# Sourced by test.sh and demo.sh: makes .venv with what Python servables need
# (msgpack, numpy, scikit-learn and the flotilla_servable shim from
# clients/python) and puts it first on PATH. Quick when it already exists.
# Sets FLOTILLA_PYTHON_OK=1 when the environment works.

venv="$PWD/.venv"
FLOTILLA_PYTHON_OK=0
check='import flotilla_servable, msgpack, numpy, sklearn'
if ! "$venv/bin/python3" -c "$check" >/dev/null 2>&1; then
    if command -v python3 >/dev/null 2>&1; then
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            sudo=""
            [ "$(id -u)" -ne 0 ] && sudo="sudo"
            echo "installing: python3-venv"
            $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
            python3 -m venv "$venv"
        fi
        echo "installing into .venv: msgpack numpy scikit-learn flotilla_servable"
        "$venv/bin/pip" install -q --disable-pip-version-check msgpack numpy scikit-learn ./clients/python
    fi
fi
if "$venv/bin/python3" -c "$check" >/dev/null 2>&1; then
    FLOTILLA_PYTHON_OK=1
    export PATH="$venv/bin:$PATH"
fi
export FLOTILLA_PYTHON_OK
