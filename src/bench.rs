//! bench placeholder
/// r
#[derive(serde::Serialize)]
pub struct Record {}
/// run
pub fn run(
    _c: &crate::Context,
    _s: Option<&str>,
    _q: bool,
    _p: bool,
) -> crate::Result<Vec<Record>> {
    Ok(vec![])
}
/// print
pub fn print_table(_c: &crate::Context, _r: &[Record]) {}
