//! A member as a page gives it: `{sub, role}`.

use gathering_core::Member;
use js_sys::Reflect;
use wasm_bindgen::JsValue;

/// Longest `sub` and `role`, in characters, as the server's tokens allow.
const MAX_CHARS: usize = 64;

/// `value` as a member: `None` for `undefined` or `null` (the connection is
/// a member of its own, every right), or a message naming what is wrong.
pub fn from_js(value: &JsValue) -> Result<Option<Member>, String> {
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    let field = |name: &str| {
        Reflect::get(value, &name.into())
            .ok()
            .and_then(|v| v.as_string())
            .filter(|s| (1..=MAX_CHARS).contains(&s.chars().count()))
            .ok_or_else(|| {
                format!("a member is {{sub, role}}, each a string of 1 to {MAX_CHARS} characters: {name} is not")
            })
    };
    Ok(Some(Member::new(field("sub")?, field("role")?)))
}
