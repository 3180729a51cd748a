# Sourced by test.sh and demo.sh: makes .venv with what Python servables need
# (msgpack, numpy, scikit-learn and the flotilla_servable shim) and the Python
# client (the flotilla package with pynng, cryptography and blake3), both
# from clients/python, and puts it first on PATH. With FLOTILLA_PYTHON_TESTS=1 it also installs what
# the Python client's tests need (pytest, and Parsl for the workflow
# example). With FLOTILLA_BENCH_PEERS=1 it also installs the engines the
# `peers` benchmark compares against (Parsl and Dask's distributed). With
# FLOTILLA_ONNX=1 it also installs onnx, onnxruntime and skl2onnx (the ONNX
# example servables' build scripts, and the reference the ONNX tests and the
# fig7 benchmark compare against); with FLOTILLA_BENCH_RAY=1, Ray Serve (the
# fig7 benchmark's peer). Quick
# when it already exists. Sets FLOTILLA_PYTHON_OK=1 when the environment
# works.

venv="$PWD/.venv"
FLOTILLA_PYTHON_OK=0
check='import flotilla, flotilla_servable, msgpack, numpy, sklearn, pynng, cryptography, blake3'
packages="msgpack numpy scikit-learn pynng cryptography blake3"
if [ "${FLOTILLA_PYTHON_TESTS:-0}" = 1 ]; then
    check="$check, pytest, parsl"
    packages="$packages pytest parsl"
fi
if [ "${FLOTILLA_BENCH_PEERS:-0}" = 1 ]; then
    check="$check, parsl, dask, distributed"
    packages="$packages parsl dask[distributed]"
fi
if [ "${FLOTILLA_ONNX:-0}" = 1 ]; then
    check="$check, onnx, onnxruntime, skl2onnx"
    packages="$packages onnx onnxruntime skl2onnx"
fi
if [ "${FLOTILLA_BENCH_RAY:-0}" = 1 ]; then
    check="$check, ray.serve"
    packages="$packages ray[serve]"
fi
if ! "$venv/bin/python3" -c "$check" >/dev/null 2>&1; then
    if command -v python3 >/dev/null 2>&1; then
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            sudo=""
            [ "$(id -u)" -ne 0 ] && sudo="sudo"
            echo "installing: python3-venv"
            $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
            python3 -m venv "$venv"
        fi
        # clients/python was once the distribution `flotilla-servable`; it is
        # now `flotilla`, which ships both packages.
        "$venv/bin/pip" uninstall -q -y flotilla-servable >/dev/null 2>&1 || true
        echo "installing into .venv: $packages, and clients/python (flotilla, flotilla_servable)"
        # shellcheck disable=SC2086
        "$venv/bin/pip" install -q --disable-pip-version-check $packages ./clients/python
    fi
fi
if "$venv/bin/python3" -c "$check" >/dev/null 2>&1; then
    FLOTILLA_PYTHON_OK=1
    export PATH="$venv/bin:$PATH"
fi
export FLOTILLA_PYTHON_OK
