pub(crate) fn load(_p: &std::path::Path, _e: &dyn crate::Lookup) -> Result<crate::Config, crate::ConfigErrors> { todo!() }
pub(crate) fn load_str(_n: &std::path::Path, _t: &str, _e: &dyn crate::Lookup) -> Result<crate::Config, crate::ConfigErrors> { todo!() }
