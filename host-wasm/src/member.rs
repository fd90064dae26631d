//! A member as a page gives it: `{sub, role}`, and the session a join may
//! carry beside it: `{session, since, epoch}`.

use gathering_core::{Member, SessionId, SessionJoin};
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

/// A join's options, `{sub, role, session, since, epoch}`, each part
/// optional: the member (`None` without `sub` and `role`: a member of its
/// own) and the session, or a message naming what is wrong.
pub fn join_from_js(value: &JsValue) -> Result<(Option<Member>, Option<SessionJoin>), String> {
    if value.is_undefined() || value.is_null() {
        return Ok((None, None));
    }
    if !value.is_object() {
        return Err("join's options are an object: {sub, role, session, since, epoch}".into());
    }
    let get = |name: &str| Reflect::get(value, &name.into()).unwrap_or(JsValue::UNDEFINED);
    let absent = |v: &JsValue| v.is_undefined() || v.is_null();
    let member = if absent(&get("sub")) && absent(&get("role")) {
        None
    } else {
        from_js(value)?
    };
    let session = get("session");
    if absent(&session) {
        if !absent(&get("since")) || !absent(&get("epoch")) {
            return Err("since and epoch resume a session: give session too".into());
        }
        return Ok((member, None));
    }
    let session = session
        .as_string()
        .ok_or("session must be a string")
        .and_then(|s| SessionId::parse(&s).map_err(|_| "session is 1 to 64 of A-Z a-z 0-9 _ -"))
        .map_err(str::to_owned)?;
    // Integers a page's numbers hold exactly.
    let number = |name: &str| match crate::options::number(value, name)? {
        None => Ok(None),
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 => {
            Ok(Some(n as u64))
        }
        Some(_) => Err(format!("{name} must be a whole number from 0 to 2^53 - 1")),
    };
    let join = SessionJoin {
        session,
        since: number("since")?,
        epoch: number("epoch")?,
    };
    Ok((member, Some(join)))
}
