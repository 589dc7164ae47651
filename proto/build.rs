//! Compiles the `.proto` schema with protox (pure Rust, no `protoc` needed), generates
//! prost types and the proto3 JSON mapping (pbjson) for them.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn Error>> {
    let files = ["natter/v1/client.proto", "natter/bus/v1/bus.proto"];
    println!("cargo:rerun-if-changed=schema");
    let fds = protox::compile(files, ["schema"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("natter_descriptor.bin");
    fs::write(&descriptor_path, fds.encode_to_vec())?;

    let mut config = prost_build::Config::new();
    // Message bodies and pushed frames stay `Bytes` so fan-out clones are reference counts.
    config.bytes(["."]);
    // Rare, large bodies are boxed, so every frame (and every enum holding one) stays the
    // size of a chat message.
    config.boxed(".natter.v1.ServerFrame.body.group_result");
    config.boxed(".natter.v1.ServerFrame.body.read_by_result");
    config.boxed(".natter.v1.ClientFrame.body.group");
    config.boxed(".natter.v1.ClientFrame.body.people");
    config.boxed(".natter.v1.ServerFrame.body.people_result");
    config.boxed(".natter.v1.ServerFrame.body.presence_snapshot");
    config.boxed(".natter.v1.Message.event");
    config.boxed(".natter.v1.Message.media");
    config.boxed(".natter.v1.Send.media");
    config.boxed(".natter.v1.Message.call");
    config.boxed(".natter.v1.Send.call");
    config.boxed(".natter.v1.ClientFrame.body.call");
    config.boxed(".natter.v1.ServerFrame.body.call_result");
    config.boxed(".natter.v1.ServerFrame.body.call_event");
    config.compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&fs::read(&descriptor_path)?)?
        .ignore_unknown_fields()
        .build(&[".natter"])?;
    Ok(())
}
