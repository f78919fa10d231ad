//! Named policies: `policies_dir: policies` loads every `policies/<name>.yaml`, each holding
//! the list of `allow:`/`deny:` blocks a route's `policy:` would hold; a route then says
//! `policy: <name>`. Policy test files (`*.test.yaml`) in the same directory are not
//! policies and are skipped. Problems are reported at their line in the policy file.

use std::path::{Path, PathBuf};

use super::node::{Ctx, Entry, Setting};
use super::policy::policy;
use crate::NamedPolicy;

/// `policies_dir:` → the directory, which must exist.
pub(super) fn directory(ctx: &mut Ctx<'_>, setting: &Setting<'_>) -> Option<PathBuf> {
    let text = ctx.non_empty(setting)?;
    let dir = ctx.dir.join(text.value.trim());
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Some(dir),
        Ok(_) => {
            ctx.error(
                text.origin,
                format!(
                    "{}: {} is a file, not a directory (give the directory that holds the \
                     `<name>.yaml` policy files)",
                    setting.path,
                    dir.display()
                ),
            );
            None
        }
        Err(e) => {
            ctx.error(
                text.origin,
                format!(
                    "{}: cannot open the directory {}: {e} (create it, or fix the path; relative \
                     paths are relative to the config file)",
                    setting.path,
                    dir.display()
                ),
            );
            None
        }
    }
}

/// Whether `file` is a policy file (and not a policy test file, a hidden or a swap file).
pub(super) fn is_policy_file(file: &Path) -> bool {
    let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".test.yaml")
        && !name.ends_with(".test.yml")
}

/// Loads every policy file in `dir` into `ctx.named_policies`, sorted by name.
pub(super) fn load_all(ctx: &mut Ctx<'_>, dir: &Path) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_policy_file(p))
            .collect(),
        Err(e) => {
            let origin = ctx.whole_file();
            ctx.error(
                origin,
                format!("policies_dir: cannot list {}: {e}", dir.display()),
            );
            return;
        }
    };
    files.sort();
    let mut named = Vec::new();
    for file in files {
        if let Some(p) = load_one(ctx, &file) {
            named.push(p);
        }
    }
    ctx.named_policies = named;
}

fn load_one(ctx: &mut Ctx<'_>, file: &Path) -> Option<NamedPolicy> {
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let name = name.to_string();
    let mut sub = Ctx::new(file, ctx.env);
    let whole = sub.whole_file();
    if !super::values::is_name(&name) {
        sub.error(
            whole,
            format!(
                "the policy name `{name}` (from the file name) may hold only letters, digits, \
                 `-` and `_`; rename the file"
            ),
        );
        return merge(ctx, sub, &name, None);
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            sub.error(whole, format!("cannot read the policy file: {e}"));
            return merge(ctx, sub, &name, None);
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let Some(root) = super::parse_yaml_any(&mut sub, text) else {
        return merge(ctx, sub, &name, None);
    };
    let origin = sub.node_origin(&root);
    let entry = Entry {
        key: &name,
        key_origin: origin.clone(),
        node: &root,
        origin,
        path: name.clone(),
    };
    let spec = policy(&mut sub, &entry);
    let out = spec.map(|spec| NamedPolicy {
        name: name.clone(),
        file: file.to_path_buf(),
        spec,
    });
    merge(ctx, sub, &name, out)
}

/// Moves the policy file's problems onto the config's context, and remembers the policy
/// `name` as broken when it did not load (so routes using it say so).
fn merge(
    ctx: &mut Ctx<'_>,
    sub: Ctx<'_>,
    name: &str,
    out: Option<NamedPolicy>,
) -> Option<NamedPolicy> {
    if out.is_none() {
        ctx.broken_policies.push(name.to_string());
    }
    ctx.errors.extend(sub.errors);
    ctx.warnings.extend(sub.warnings);
    out
}
