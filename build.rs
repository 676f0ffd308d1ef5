//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler), so building needs no `protoc`, and
//! keeps the compiled descriptors (`descriptors.bin` in `OUT_DIR`) for the server's reflection service; the job
//! record format of the state directory (`proto/runnel/state/`) and the message that hands a job to a shell
//! (`proto/runnel/shell/`) are compiled apart, as they are not served.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/runnel/v1/runnel.proto",
        "proto/grpc/health/v1/health.proto",
        "proto/grpc/reflection/v1/reflection.proto",
        "proto/grpc/reflection/v1alpha/reflection.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    // Every file and what it imports (google/protobuf/*), with comments, so reflection clients can show them.
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("descriptors.bin"), descriptors.encode_to_vec())?;
    // Output chunks are decoded as slices of the received frame rather than copied into a `Vec`.
    prost_build::Config::new().bytes([".runnel.v1.OutputChunk.data"]).compile_fds(descriptors)?;
    // The job records kept in the state directory and the jobs handed to shells: the server's own formats, not
    // served by reflection.
    let internal = ["proto/runnel/state/v1/record.proto", "proto/runnel/shell/v1/job.proto"];
    for proto in internal {
        println!("cargo:rerun-if-changed={proto}");
    }
    prost_build::Config::new().compile_fds(protox::compile(internal, ["proto"])?)?;
    Ok(())
}
