# Shared by scripts/test and scripts/demo.

VENV="${TRIBUTARY_VENV:-$HOME/.cache/tributary/venv}"

step() { printf '\n==> %s\n' "$*"; }

# C toolchain and headers for librdkafka (with TLS) and the Python used by tests.
install_system_packages() {
    # clang + libclang-dev: bindgen for the RocksDB bindings. strace: a unit
    # test reads the system calls that make the offsets log durable.
    # curl: the prebuilt RocksDB of dev builds (prebuilt_rocksdb).
    local wanted=(build-essential pkg-config libssl-dev zlib1g-dev clang libclang-dev strace curl)
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

# Dev builds (the demo's and the tests') link RocksDB as the RocksDB project
# builds it for Java: the x86-64 Linux library of `rocksdbjni` on Maven
# Central, which exports RocksDB's C API, at exactly the version librocksdb-sys
# bundles. Compiling RocksDB's C++ instead took 19 of a fresh build's 46
# minutes on two cores (docs/benchmarks.md). Release builds (`cargo build
# --release` by hand, or the Dockerfile) leave ROCKSDB_LIB_DIR unset and
# compile it into the binary. The `tributary` binary records the library's
# folder as its run path (crates/service/build.rs); test binaries find it
# through LD_LIBRARY_PATH. TRIBUTARY_COMPILE_ROCKSDB=1 compiles it anyway.
ROCKSDB_VERSION=10.4.2  # as bundled by Cargo.lock's librocksdb-sys (checked below)
ROCKSDB_JNI_SHA256=34a9b9ab5bdb128c058363d72a83ab5d0a498a97df9cf1291f1a6e9260bb70b1

prebuilt_rocksdb() {
    if [ -n "${TRIBUTARY_COMPILE_ROCKSDB:-}" ] || [ "$(uname -sm)" != "Linux x86_64" ]; then
        return
    fi
    grep -A1 '^name = "librocksdb-sys"$' Cargo.lock | grep -q "^version = \".*+$ROCKSDB_VERSION\"$" \
        || { echo "Cargo.lock's librocksdb-sys does not bundle RocksDB $ROCKSDB_VERSION: update scripts/lib.sh" >&2; exit 1; }
    local dir="$HOME/.cache/tributary/rocksdb-$ROCKSDB_VERSION"
    if [ ! -f "$dir/librocksdb.so" ]; then
        step "RocksDB $ROCKSDB_VERSION, prebuilt (rocksdbjni from Maven Central)"
        local scratch
        scratch="$(mktemp -d)"
        local url="https://repo1.maven.org/maven2/org/rocksdb/rocksdbjni/$ROCKSDB_VERSION/rocksdbjni-$ROCKSDB_VERSION-linux64.jar"
        if ! curl -fsSL --retry 3 -o "$scratch/rocksdbjni.jar" "$url" \
            || ! echo "$ROCKSDB_JNI_SHA256  $scratch/rocksdbjni.jar" | sha256sum --check --quiet; then
            echo "could not fetch $url with SHA-256 $ROCKSDB_JNI_SHA256;" \
                "TRIBUTARY_COMPILE_ROCKSDB=1 compiles RocksDB instead (about 20 more minutes)" >&2
            exit 1
        fi
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("librocksdbjni-linux64.so", sys.argv[2])' \
            "$scratch/rocksdbjni.jar" "$scratch"
        mkdir -p "$dir"
        cp "$scratch/librocksdbjni-linux64.so" "$dir/librocksdb.so.partial"
        mv "$dir/librocksdb.so.partial" "$dir/librocksdb.so"
        rm -rf "$scratch"
    fi
    export ROCKSDB_LIB_DIR="$dir"
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
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

# What the deployment tests run instead of Docker and Terraform, which this
# machine lacks: docker-compose (Debian's) to check the compose file, and
# checkov in its own virtualenv.
CHECKOV_VENV="${TRIBUTARY_CHECKOV_VENV:-$HOME/.cache/tributary/checkov-venv}"

deployment_checkers() {
    if ! command -v docker-compose >/dev/null; then
        step "installing docker-compose"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq docker-compose
    fi
    local stamp="$CHECKOV_VENV/.requirements"
    if [ ! -x "$CHECKOV_VENV/bin/checkov" ] || ! cmp -s tests/deployment-requirements.txt "$stamp"; then
        step "checkov virtualenv at $CHECKOV_VENV"
        python3 -m venv "$CHECKOV_VENV"
        "$CHECKOV_VENV/bin/pip" install -q --upgrade pip
        "$CHECKOV_VENV/bin/pip" install -q -r tests/deployment-requirements.txt
        cp tests/deployment-requirements.txt "$stamp"
    fi
    export CHECKOV="$CHECKOV_VENV/bin/checkov"
}

# tansu, a Kafka-protocol broker independent of librdkafka, for the system
# tests (tests/e2e/test_tansu.py). Built once (about 12 minutes on two
# cores) into its own root, with its own target directory.
TANSU_ROOT="${TRIBUTARY_TANSU_ROOT:-$HOME/.cache/tributary/tansu}"

tansu_broker() {
    if ! "$TANSU_ROOT/bin/tansu" --version 2>/dev/null | grep -q "0.6.0"; then
        step "building tansu 0.6.0 (once)"
        CARGO_TARGET_DIR="$HOME/.cache/tributary/tansu-build" \
            cargo install tansu --version 0.6.0 --locked --features dynostore --root "$TANSU_ROOT"
    fi
    export TANSU="$TANSU_ROOT/bin/tansu"
}

# Apache Kafka for the end-to-end suite: the broker's jars from Maven Central
# (tests/kafka/pom.xml pins the version), copied once into the cache. The
# tests start KRaft brokers from them (tests/e2e/kafka_cluster.py). Kafka 4
# brokers need Java 17 or newer; Debian's openjdk-17 and maven are installed
# when missing.
kafka_jars() {
    if ! command -v mvn >/dev/null || ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then
        step "installing Java 17 and Maven"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openjdk-17-jdk-headless maven
    fi
    local version
    version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' tests/kafka/pom.xml)"
    KAFKA_LIBS="$HOME/.cache/tributary/kafka-$version/libs"
    local stamp="$KAFKA_LIBS/.pom"
    if ! cmp -s tests/kafka/pom.xml "$stamp"; then
        step "Apache Kafka $version from Maven Central"
        rm -rf "$KAFKA_LIBS"
        mvn -q -B -Dstyle.color=never -f tests/kafka/pom.xml dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS"
        cp tests/kafka/pom.xml "$stamp"
    fi
    export KAFKA_LIBS
}

# The fuzz targets (fuzz/): cargo-fuzz from crates.io, built once into the
# cache, and libFuzzer without a sanitizer, which works on the stable
# toolchain. Each target runs for FUZZ_SECONDS from the corpus kept in the
# repository (new inputs go to a scratch directory); a crash fails the run
# and leaves its input under fuzz/artifacts/ to become a regression seed.
CARGO_FUZZ_ROOT="${TRIBUTARY_CARGO_FUZZ_ROOT:-$HOME/.cache/tributary/cargo-fuzz}"

fuzz_targets() {
    if ! "$CARGO_FUZZ_ROOT/bin/cargo-fuzz" --version 2>/dev/null | grep -q "0.13.2"; then
        step "building cargo-fuzz 0.13.2 (once)"
        cargo install cargo-fuzz --version 0.13.2 --locked --root "$CARGO_FUZZ_ROOT"
    fi
    local seconds="${FUZZ_SECONDS:-60}" scratch target
    scratch="$(mktemp -d)"
    for target in framed_decoder spec_parser; do
        step "fuzzing $target for ${seconds}s"
        mkdir -p "$scratch/$target"
        (cd fuzz && PATH="$CARGO_FUZZ_ROOT/bin:$PATH" CARGO_TARGET_DIR="$HOME/.cache/tributary/fuzz-target" \
            cargo fuzz run --sanitizer none "$target" \
            "$scratch/$target" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1)
    done
    rm -rf "$scratch"
}
