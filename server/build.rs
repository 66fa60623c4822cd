//! Generates the gRPC server of the Open Inference Protocol from proto/inference.proto.
//! The .proto is parsed by `protox` (pure Rust), so no `protoc` is needed to build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/inference.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path("crate::grpc_codec::BoundedCodec")
        .compile_fds(fds)?;
    Ok(())
}
