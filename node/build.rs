// Compiles proto/consort.proto with protox (pure Rust), so building needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/consort.proto"], ["proto"])?;
    tonic_prost_build::configure().bytes(".consort.v1.PeerFrame.data").compile_fds(descriptors)?;
    Ok(())
}
