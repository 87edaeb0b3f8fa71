//! Query parameters shared by the list routes, each error naming its parameter.

use std::collections::HashMap;

use super::error::ApiError;

/// A parameter the route does not know is an error, not silently an unfiltered list.
pub fn only_known(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::bad_request(
            unknown,
            format!("unknown parameter; use one of {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// `limit`: 1 to `max`, `default` when absent.
pub fn limit(params: &HashMap<String, String>, default: u32, max: u32) -> Result<u32, ApiError> {
    match params.get("limit") {
        None => Ok(default.min(max)),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("limit", format!("must be a number from 1 to {max}"))
            }),
    }
}

/// A yes/no switch: absent is no.
pub fn switch(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::bad_request(name, "must be true or false")),
    }
}
