//! `gpuopt replay`: placeholder
pub fn run_case(_d: &std::path::Path, _c: Option<&crate::Context>) -> crate::Result<()> {
    Ok(())
}
