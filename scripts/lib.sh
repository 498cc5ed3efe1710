# Shared by scripts/test and scripts/demo.

VENV="${TRIBUTARY_VENV:-$HOME/.cache/tributary/venv}"

step() { printf '\n==> %s\n' "$*"; }

# C toolchain and headers for librdkafka (with TLS) and the Python used by tests.
install_system_packages() {
    local wanted=(build-essential pkg-config libssl-dev zlib1g-dev)
    # Any Python 3 with venv will do (Debian's, or pyenv's).
    if ! { command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; }; then
        wanted+=(python3 python3-venv)
    fi
    local missing=()
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        step "installing ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
    fi
}

# The independent readers and producers of the end-to-end tests.
python_venv() {
    local stamp="$VENV/.requirements"
    if [ ! -x "$VENV/bin/python" ] || ! cmp -s tests/requirements.txt "$stamp"; then
        step "Python virtualenv at $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -r tests/requirements.txt
        cp tests/requirements.txt "$stamp"
    fi
}
