//! The demo page's in-page host: the two shipped apps exported to
//! JavaScript, `TournamentHost` (the page's) and `ChatHost`, each a
//! [`gathering_wasm::Host`] behind [`gathering_wasm::export_host!`]; an app
//! of your own is one such line in your wasm crate.

gathering_wasm::export_host!(TournamentHost, gathering_core::tournament::Tournament);
gathering_wasm::export_host!(ChatHost, gathering_core::chat::Chat);
