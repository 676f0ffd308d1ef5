//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/runnel/v1/runnel.proto", "proto/grpc/health/v1/health.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // Output chunks are decoded as slices of the received frame rather than copied into a `Vec`.
    prost_build::Config::new().bytes([".runnel.v1.OutputChunk.data"]).compile_fds(descriptors)?;
    Ok(())
}
