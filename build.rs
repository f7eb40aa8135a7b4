//! Generates the protobuf and gRPC code from `proto/` with a pure-Rust compiler (protox),
//! so that a build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/longlink/v1/device.proto",
        "proto/longlink/v1/router.proto",
        "proto/longlink/v1/store.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
