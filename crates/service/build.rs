//! Dev builds may link RocksDB as a shared library from ROCKSDB_LIB_DIR
//! (scripts/lib.sh, `prebuilt_rocksdb`); the binary then records that
//! folder as its run path, so that it starts without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    if let Ok(dir) = std::env::var("ROCKSDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
