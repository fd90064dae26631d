//! In-browser host (placeholder).
