//! The binary's commands for people: each module holds one group's flags (with help and
//! examples) and what it does; `main.rs` dispatches. What several commands share is here.

pub mod api_commands;
pub mod build_command;
pub mod docs;
pub mod submit_command;

use anyhow::Context;
use image_builder::client::ApiClient;
use secrecy::SecretString;
use serde_json::{Map, Value};

/// A client of the API at `base`. The key comes from IMAGE_BUILDER_API_KEY only, never a flag:
/// command lines are visible to every user of the host.
pub fn api_client(base: &str) -> anyhow::Result<ApiClient> {
    let key = std::env::var("IMAGE_BUILDER_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .map(SecretString::from);
    ApiClient::new(base, key)
}

/// Sets the flags that were given as request fields, and `token` from the variable
/// `token_env` names (tokens never go on the command line).
pub fn request_fields(
    body: &mut Map<String, Value>,
    fields: &[(&str, &Option<String>)],
    token_env: Option<&str>,
) -> anyhow::Result<()> {
    for (key, value) in fields {
        if let Some(value) = value {
            body.insert((*key).into(), Value::String(value.clone()));
        }
    }
    if let Some(var) = token_env {
        let token =
            std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
        body.insert("token".into(), Value::String(token));
    }
    Ok(())
}
