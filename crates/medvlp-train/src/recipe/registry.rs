//! Every recipe by name: the built-in ones and any registered at run time. The CLI's errors,
//! `medvlp compare`'s defaults and ablations, the shipped configs and the tests read this list,
//! so that nothing else needs to know which recipes exist.

use super::{clip, mae_mlm, mcr, mpma, xlip, Method, ObjectiveConfig};
use anyhow::{bail, Context, Result};
use std::sync::{LazyLock, RwLock};

/// The recipes built into medvlp, in the order tables list them.
pub const BUILT_IN: [&dyn Method; 5] =
    [&clip::Clip, &mae_mlm::MaeMlm, &xlip::Xlip, &mcr::Mcr, &mpma::Mpma];

static REGISTRY: LazyLock<RwLock<Vec<&'static dyn Method>>> =
    LazyLock::new(|| RwLock::new(BUILT_IN.to_vec()));

/// Adds a recipe (e.g. one defined outside this crate) to the registry. Its name must be new and
/// every key it declares must be a key of [`ObjectiveConfig`].
pub fn register(m: &'static dyn Method) -> Result<()> {
    check(m)?;
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if r.iter().any(|x| x.name() == m.name()) {
        bail!("a recipe named '{}' is already registered", m.name());
    }
    r.push(m);
    Ok(())
}

/// The declarations a recipe must get right: known keys, valid defaults, parseable ablations.
pub fn check(m: &dyn Method) -> Result<()> {
    let known = objective_keys();
    for k in m.keys() {
        if !known.iter().any(|x| x == k) {
            bail!("recipe '{}' declares objective key '{k}', which does not exist", m.name());
        }
    }
    m.validate(&m.defaults()).with_context(|| format!("recipe '{}': its defaults", m.name()))?;
    for a in m.ablations() {
        for o in a.overrides {
            let key = o.split_once('=').map(|(k, _)| k.trim()).unwrap_or(o);
            if let Some(k) = key.strip_prefix("objectives.") {
                if !m.keys().contains(&k) {
                    bail!(
                        "recipe '{}': ablation '{}' sets {key}, not one of its keys",
                        m.name(),
                        a.label
                    );
                }
            }
        }
    }
    Ok(())
}

/// Every registered recipe, built-in ones first.
pub fn recipes() -> Vec<&'static dyn Method> {
    REGISTRY.read().unwrap_or_else(|e| e.into_inner()).clone()
}

pub fn names() -> Vec<&'static str> {
    recipes().iter().map(|m| m.name()).collect()
}

/// The recipe called `name`; the error lists the known ones.
pub fn recipe(name: &str) -> Result<&'static dyn Method> {
    recipes()
        .into_iter()
        .find(|m| m.name() == name)
        .with_context(|| format!("unknown recipe '{name}' (known: {})", names().join(", ")))
}

/// Every key of `[objectives]`, whichever recipe reads it.
pub fn objective_keys() -> Vec<String> {
    match toml::Table::try_from(ObjectiveConfig::default()) {
        Ok(t) => t.keys().cloned().collect(),
        Err(_) => vec![],
    }
}

/// The TOML text of a recipe's shipped config for a preset (`xlip` + `small` = xlip-small.toml).
pub fn shipped_config(name: &str, preset: &str) -> Result<&'static str> {
    let m = recipe(name)?;
    m.configs().iter().find(|(p, _)| *p == preset).map(|(_, t)| *t).with_context(|| {
        let presets: Vec<&str> = m.configs().iter().map(|(p, _)| *p).collect();
        format!(
            "recipe '{name}' ships no config for preset '{preset}' (it has {})",
            presets.join(", ")
        )
    })
}

/// One run of a comparison: a recipe, or one of its ablations.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    /// "xlip", or "xlip, random MIM" for an ablation.
    pub label: String,
    pub recipe: &'static str,
    pub overrides: Vec<String>,
}

/// The runs of a comparison: each named recipe (every registered one when `names` is empty), each
/// followed by its ablations when asked for.
pub fn variants(names: &[String], ablations: bool) -> Result<Vec<Variant>> {
    let chosen: Vec<&'static dyn Method> = if names.is_empty() {
        recipes()
    } else {
        names.iter().map(|n| recipe(n)).collect::<Result<_>>()?
    };
    let mut v = vec![];
    for m in chosen {
        v.push(Variant { label: m.name().into(), recipe: m.name(), overrides: vec![] });
        if ablations {
            for a in m.ablations() {
                v.push(Variant {
                    label: format!("{}, {}", m.name(), a.label),
                    recipe: m.name(),
                    overrides: a.overrides.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_recipes_declare_valid_keys_defaults_and_ablations() {
        for m in BUILT_IN {
            check(m).unwrap();
            assert!(m.paper().contains("arXiv"), "{}: cite the paper", m.name());
            for preset in ["tiny", "small", "base"] {
                shipped_config(m.name(), preset).unwrap();
            }
        }
        let e = recipe("nope").err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("xlip") && e.contains("mpma"), "{e}");
        let e = shipped_config("xlip", "huge").unwrap_err().to_string();
        assert!(e.contains("huge") && e.contains("small"), "{e}");
    }

    #[test]
    fn comparison_variants_follow_the_registry() {
        let v = variants(&["xlip".into(), "mpma".into()], true).unwrap();
        let labels: Vec<&str> = v.iter().map(|x| x.label.as_str()).collect();
        assert_eq!(labels[0], "xlip");
        assert!(labels.contains(&"xlip, random MIM"));
        assert!(labels.contains(&"mpma, no memory"));
        assert_eq!(variants(&[], false).unwrap().len(), recipes().len());
        assert!(variants(&["nope".into()], false).is_err());
    }
}
