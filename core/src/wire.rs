//! One enum definition, two wire shapes.
//!
//! JSON wants internally tagged enums (`{"type":"op",...}`), which postcard
//! cannot encode because it carries no field names. [`wire_enum!`] declares an
//! enum once and gives it a `Serialize`/`Deserialize` that picks the shape from
//! the format: human-readable formats (JSON) see `{"type": "snake_case_name",
//! ...fields}`, compact ones (postcard) see the variant index followed by the
//! fields. Nested wire enums follow the same rule, so an op inside a message
//! is tagged the same way as the message.

/// Declares an enum of struct variants that is tagged JSON for humans and
/// compact postcard for machines: `{"type": "snake_case_name", ...fields}`
/// in human-readable formats, the variant index and then the fields in
/// compact ones. Variants must use braces (`Name { field: Type }`); type
/// parameters may have defaults (`<O, P = ()>`). The calling crate needs
/// `serde` (with `derive`) among its dependencies.
///
/// ```
/// gathering_core::wire_enum! {
///     /// A chat room's one op.
///     #[derive(Clone, Debug, PartialEq)]
///     pub enum RoomOp {
///         Say { text: String },
///     }
/// }
/// let op = RoomOp::Say { text: "hi".into() };
/// assert_eq!(serde_json::to_string(&op).unwrap(), r#"{"type":"say","text":"hi"}"#);
/// assert_eq!(postcard::to_allocvec(&op).unwrap(), [0, 2, b'h', b'i']);
/// ```
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident $(<$($g:ident $(= $gd:ty)?),+>)? {
            $(
                $(#[$vmeta:meta])*
                $var:ident { $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)? }
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name $(<$($g $(= $gd)?),+>)? {
            $( $(#[$vmeta])* $var { $( $(#[$fmeta])* $field: $ty ),* } ),+
        }

        const _: () = {
            #[derive(serde::Serialize)]
            #[serde(tag = "type", rename_all = "snake_case")]
            enum TaggedRef<'a $($(, $g)+)?> { $( $var { $( $field: &'a $ty ),* } ),+ }

            #[derive(serde::Serialize)]
            #[serde(rename_all = "snake_case")]
            enum PlainRef<'a $($(, $g)+)?> { $( $var { $( $field: &'a $ty ),* } ),+ }

            #[derive(serde::Deserialize)]
            #[serde(tag = "type", rename_all = "snake_case")]
            enum TaggedOwned $(<$($g),+>)? { $( $var { $( $field: $ty ),* } ),+ }

            #[derive(serde::Deserialize)]
            #[serde(rename_all = "snake_case")]
            enum PlainOwned $(<$($g),+>)? { $( $var { $( $field: $ty ),* } ),+ }

            fn tagged<'a $($(, $g)+)?>(v: &'a $name $(<$($g),+>)?) -> TaggedRef<'a $($(, $g)+)?> {
                match v { $( $name::$var { $($field),* } => TaggedRef::$var { $($field),* }, )+ }
            }

            fn plain<'a $($(, $g)+)?>(v: &'a $name $(<$($g),+>)?) -> PlainRef<'a $($(, $g)+)?> {
                match v { $( $name::$var { $($field),* } => PlainRef::$var { $($field),* }, )+ }
            }

            fn from_tagged $(<$($g),+>)? (v: TaggedOwned $(<$($g),+>)?) -> $name $(<$($g),+>)? {
                match v { $( TaggedOwned::$var { $($field),* } => $name::$var { $($field),* }, )+ }
            }

            fn from_plain $(<$($g),+>)? (v: PlainOwned $(<$($g),+>)?) -> $name $(<$($g),+>)? {
                match v { $( PlainOwned::$var { $($field),* } => $name::$var { $($field),* }, )+ }
            }

            impl $(<$($g: serde::Serialize),+>)? serde::Serialize for $name $(<$($g),+>)? {
                fn serialize<__S: serde::Serializer>(&self, serializer: __S) -> Result<__S::Ok, __S::Error> {
                    if serializer.is_human_readable() {
                        tagged(self).serialize(serializer)
                    } else {
                        plain(self).serialize(serializer)
                    }
                }
            }

            impl<'de $($(, $g: serde::Deserialize<'de>)+)?> serde::Deserialize<'de> for $name $(<$($g),+>)? {
                fn deserialize<__D: serde::Deserializer<'de>>(deserializer: __D) -> Result<Self, __D::Error> {
                    if deserializer.is_human_readable() {
                        TaggedOwned::deserialize(deserializer).map(from_tagged)
                    } else {
                        PlainOwned::deserialize(deserializer).map(from_plain)
                    }
                }
            }
        };
    };
}
