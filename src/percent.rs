//! Percent-encoding of one URL component, as JavaScript's `encodeURIComponent` and most URL
//! libraries do it: everything but letters, digits and `-_.~` is escaped.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What a URL component may hold as is.
pub const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `raw` as one URL component (a path segment, a query value).
pub fn encode_component(raw: &str) -> String {
    utf8_percent_encode(raw, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use crate::percent::encode_component;

    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(encode_component("/"), "%2F");
        assert_eq!(encode_component("a-b_c.d~e f"), "a-b_c.d~e%20f");
    }
}
