# Sourced by test.sh after python-env.sh: fills .wheelhouse with binary
# wheels of what the servable-environment tests publish (msgpack, numpy,
# scikit-learn and their dependencies), at the versions installed in .venv,
# so those tests capture and install environments with no package index
# (PIP_NO_INDEX=1 PIP_FIND_LINKS=.wheelhouse). Quick when it is complete.
wheelhouse="$PWD/.wheelhouse"
if [ ! -f "$wheelhouse/.complete" ]; then
    pins=$(.venv/bin/python3 -c 'from importlib import metadata as m; print(" ".join("%s==%s" % (p, m.version(p)) for p in ("msgpack", "numpy", "scikit-learn")))')
    echo "downloading wheels into .wheelhouse: $pins"
    # shellcheck disable=SC2086
    if .venv/bin/python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --dest "$wheelhouse" $pins; then
        touch "$wheelhouse/.complete"
    else
        echo "cannot download the test wheels into .wheelhouse" >&2
    fi
fi
