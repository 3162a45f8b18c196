// Compiles proto/consort.proto with protox (pure Rust), so building needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/consort.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".consort.v1.PeerFrame.data")
        // The node keeps its job table as JSON files of these (DIR/jobs/).
        .type_attribute(".consort.v1.JobStatus", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .type_attribute(".consort.v1.Stage", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .compile_fds(descriptors)?;
    Ok(())
}
