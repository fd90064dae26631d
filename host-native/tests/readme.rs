//! README's "Host your own app" cannot drift: its code is the counter
//! example's, which compiles with the tests and runs end to end here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The example's `main` is for `cargo run`; the test calls `run`.
#[allow(dead_code)]
#[path = "../examples/counter.rs"]
mod counter;

/// The lines between the example's `// README: begin` and `// README: end`.
fn quoted_region(example: &str) -> &str {
    let begin = "// README: begin\n";
    let start = example.find(begin).expect("the begin mark") + begin.len();
    let end = example[start..]
        .find("// README: end")
        .expect("the end mark");
    &example[start..start + end]
}

#[test]
fn readme_quotes_the_counter_example_exactly() {
    let readme = include_str!("../../README.md");
    let quoted = quoted_region(include_str!("../examples/counter.rs"));
    let block = format!("```rust\n{quoted}```\n");
    assert!(
        readme.contains(&block),
        "README.md's rust block must be the counter example's region between its README marks:\n{quoted}"
    );
}

#[tokio::test]
async fn the_counter_example_acks_forwards_and_refuses() {
    tokio::time::timeout(std::time::Duration::from_secs(30), counter::run())
        .await
        .expect("the example finishes within 30 s")
        .unwrap();
}
