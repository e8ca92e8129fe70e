//! Reading a spec: task defaults ← the file ← `--set` overrides ← defaults that depend on the
//! variant (the bc/tc latent-lr scale on ptb_word), then range checks. Every message names the
//! file, the key and what is allowed.

use std::path::Path;

use toml::{Table, Value};

use super::{CellKind, DATA_ENV, GemmPrecision, Normalization, Optimizer, Quantizer, Schedule, Spec, Task};
use crate::bail;
use crate::error::{Error, Result};

impl Spec {
    /// Read, merge and validate a spec file with `--set key=value` overrides applied.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Spec> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::new(format!("{file}: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| Error::new(format!("{file}: not UTF-8 text ({e})")))?;
        if text.trim().is_empty() {
            bail!("{file}: the file is empty; a spec needs at least `task = \"...\"`");
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        Spec::from_toml_str(&text, &file, stem.as_deref(), overrides)
    }

    /// Resolve a spec from TOML text. `origin` names the source in messages.
    pub fn from_toml_str(text: &str, origin: &str, default_name: Option<&str>, overrides: &[String]) -> Result<Spec> {
        let mut user: Table = toml::from_str(text)
            .map_err(|e| Error::new(format!("{origin}: invalid TOML: {}", one_line(&e.to_string()))))?;
        for o in overrides {
            apply_override(&mut user, o)?;
        }
        let task = match user.get("task") {
            None => bail!("{origin}: missing key `task`; allowed: {}", Task::allowed()),
            Some(Value::String(t)) => match t.parse::<Task>() {
                Ok(task) => task,
                Err(_) => bail!("{origin}: task = \"{t}\" is not a task; allowed: {}", Task::allowed()),
            },
            Some(v) => bail!("{origin}: `task` must be a string, got {}", v.type_str()),
        };
        let mut defaults = Spec::defaults(task);
        if let Some(n) = default_name {
            defaults.name = n.to_string();
        }
        let mut merged = Value::try_from(&defaults).expect("defaults serialize").as_table().unwrap().clone();
        check_and_merge(&mut merged, &user, "", origin)?;
        let mut spec: Spec = Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| Error::new(format!("{origin}: {}", one_line(e.message()))))?;
        spec.apply_variant_defaults(&user);
        spec.validate(origin)?;
        spec.resolve_data_dir(&user, overrides, origin)?;
        Ok(spec)
    }

    /// One rule for where the data is: `data.dir` as given (file or `--set`), else
    /// `$QLSTM_DATA`, else `data`; a relative path is resolved now, against the directory qlstm
    /// was started from, so the resolved spec (spec.toml, checkpoints, emitted jobs) holds an
    /// absolute path that works from anywhere.
    fn resolve_data_dir(&mut self, user: &Table, overrides: &[String], origin: &str) -> Result<()> {
        let given = user.get("data").and_then(|d| d.as_table()).is_some_and(|d| d.contains_key("dir"));
        let env = std::env::var(DATA_ENV).ok().filter(|v| !v.is_empty());
        let how = if overrides.iter().any(|o| o.trim_start().starts_with("data.dir")) {
            "as --set gives it".to_string()
        } else if given {
            format!("as {origin} gives it")
        } else if let Some(v) = env {
            self.data.dir = v;
            format!("from ${DATA_ENV}")
        } else {
            "the default, as no data.dir or $QLSTM_DATA is set".to_string()
        };
        let dir = Path::new(&self.data.dir);
        if dir.is_absolute() {
            self.data.dir_origin = format!("data.dir = {}, {how}", self.data.dir);
        } else {
            let cwd =
                std::env::current_dir().map_err(|e| Error::new(format!("{origin}: the current directory: {e}")))?;
            let abs = std::path::absolute(cwd.join(dir)).map_err(|e| Error::new(format!("{origin}: data.dir: {e}")))?;
            self.data.dir_origin = format!(
                "data.dir = {} ({how}) resolved against the directory qlstm started in, {}",
                self.data.dir,
                cwd.display()
            );
            self.data.dir = abs.display().to_string();
        }
        Ok(())
    }

    /// Defaults that depend on more than the task: docs/SPEC.md §3 gives bc/tc on ptb_word (SGD) a
    /// latent-weight lr of lr × 2√H. Only where the user did not set the key.
    fn apply_variant_defaults(&mut self, user: &Table) {
        let user_set = user.get("train").and_then(|t| t.as_table()).is_some_and(|t| t.contains_key("latent_lr_scale"));
        if !user_set
            && self.task == Task::PtbWord
            && self.train.optimizer == Optimizer::Sgd
            && matches!(self.model.quantizer, Quantizer::Bc | Quantizer::Tc)
        {
            self.train.latent_lr_scale = 2.0 * (self.model.hidden as f64).sqrt();
        }
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let m = &self.model;
        let t = &self.train;
        let positive = [
            ("model.hidden", m.hidden),
            ("model.layers", m.layers),
            ("train.batch_size", t.batch_size),
            ("train.eval_batch_size", t.eval_batch_size),
            ("train.bptt", t.bptt),
            ("train.epochs", t.epochs),
        ];
        for (key, v) in positive {
            if v == 0 {
                bail!("{origin}: `{key}` = 0; it must be at least 1");
            }
        }
        if m.hidden > 16384 {
            bail!("{origin}: `model.hidden` = {} is too large; allowed 1..=16384", m.hidden);
        }
        if m.layers > 16 {
            bail!("{origin}: `model.layers` = {} is too many; allowed 1..=16", m.layers);
        }
        if self.task.uses_embedding() {
            if m.embedding == 0 || m.embedding > 16384 {
                bail!("{origin}: `model.embedding` = {} for ptb_word; allowed 1..=16384", m.embedding);
            }
        } else if m.embedding != 0 {
            bail!(
                "{origin}: `model.embedding` = {} but task {} has no embedding (one-hot or pixel input); set it to 0",
                m.embedding,
                self.task.name()
            );
        }
        if !self.task.uses_embedding() && m.dropout_input != 0.0 {
            bail!(
                "{origin}: `model.dropout_input` = {} but task {} has no embedding to drop out (one-hot or pixel input); set it to 0",
                m.dropout_input,
                self.task.name()
            );
        }
        for (key, p) in [
            ("model.dropout_input", m.dropout_input),
            ("model.dropout_between", m.dropout_between),
            ("model.dropout_output", m.dropout_output),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{origin}: `{key}` = {p}; allowed 0 <= p < 1");
            }
        }
        let finite_pos = [("train.lr", t.lr), ("train.latent_lr_scale", t.latent_lr_scale)];
        for (key, v) in finite_pos {
            if !(v.is_finite() && v > 0.0) {
                bail!("{origin}: `{key}` = {v}; it must be a positive number");
            }
        }
        if !(t.clip.is_finite() && t.clip >= 0.0) {
            bail!("{origin}: `train.clip` = {}; allowed >= 0 (0 disables clipping)", t.clip);
        }
        if !(t.lr_decay.is_finite() && t.lr_decay > 0.0 && t.lr_decay <= 1.0) {
            bail!("{origin}: `train.lr_decay` = {}; allowed 0 < x <= 1", t.lr_decay);
        }
        if !(t.max_loss.is_finite() && t.max_loss >= 0.0) {
            bail!("{origin}: `train.max_loss` = {}; allowed >= 0 (0 = 3·ln(outputs))", t.max_loss);
        }
        if !(t.plateau_factor.is_finite() && t.plateau_factor >= 1.0) {
            bail!("{origin}: `train.plateau_factor` = {}; allowed >= 1", t.plateau_factor);
        }
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name == "." || self.name == ".." {
            bail!("{origin}: `name` = \"{}\" must be a non-empty file name (no '/')", self.name);
        }
        if self.task.is_mnist() && self.train.bptt != 784 {
            bail!(
                "{origin}: `train.bptt` = {} for {}; a sequence is the 784 pixels of an image, set 784",
                self.train.bptt,
                self.task.name()
            );
        }
        Ok(())
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `model.hidden=128` → user["model"]["hidden"] = 128. The value is read as TOML; a bare word
/// that is not valid TOML (`bc`) is taken as a string.
fn apply_override(user: &mut Table, o: &str) -> Result<()> {
    let Some((key, raw)) = o.split_once('=') else {
        bail!("--set {o}: expected KEY=VALUE, e.g. --set model.hidden=128");
    };
    let key = key.trim();
    let raw = raw.trim();
    let value = match toml::from_str::<Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap(),
        Err(_) => Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {o}: `{key}` is not a key path like train.lr");
    }
    let mut table = user;
    for p in &parts[..parts.len() - 1] {
        let entry = table.entry(p.to_string()).or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            _ => bail!("--set {o}: `{p}` is not a section"),
        };
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Merge `user` into `base` (which holds every allowed key with a default), rejecting unknown
/// keys and values whose TOML type differs from the default's (integers are accepted for floats).
fn check_and_merge(base: &mut Table, user: &Table, prefix: &str, origin: &str) -> Result<()> {
    for (k, v) in user {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        let Some(slot) = base.get_mut(k) else {
            let mut allowed: Vec<&String> = base.keys().collect();
            allowed.sort();
            let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            let section = if prefix.is_empty() { "the top level".to_string() } else { format!("[{prefix}]") };
            bail!("{origin}: unknown key `{path}`; allowed in {section}: {}", allowed.join(", "));
        };
        match (slot, v) {
            (Value::Table(b), Value::Table(u)) => check_and_merge(b, u, &path, origin)?,
            (Value::Table(_), other) => {
                bail!("{origin}: `{path}` must be a section [{path}], got {}", other.type_str())
            }
            (slot @ Value::Float(_), Value::Integer(i)) => *slot = Value::Float(*i as f64),
            (slot, v) if std::mem::discriminant(slot) == std::mem::discriminant(v) => {
                if let Value::Integer(i) = v
                    && *i < 0
                {
                    bail!("{origin}: `{path}` = {i}; it must not be negative");
                }
                if let Value::String(s) = v {
                    check_enum(&path, s, origin)?;
                }
                *slot = v.clone();
            }
            (slot, v) => bail!(
                "{origin}: `{path}` must be {} (like {}), got {} {}",
                article(slot.type_str()),
                slot,
                v.type_str(),
                v
            ),
        }
    }
    Ok(())
}

fn article(t: &str) -> String {
    if t.starts_with(['a', 'e', 'i', 'o', 'u']) { format!("an {t}") } else { format!("a {t}") }
}

/// Enumerated string fields: say which values are allowed.
fn check_enum(path: &str, s: &str, origin: &str) -> Result<()> {
    let parsed = match path {
        "model.cell" => s.parse::<CellKind>().map(|_| ()),
        "model.quantizer" => s.parse::<Quantizer>().map(|_| ()),
        "model.normalization" => s.parse::<Normalization>().map(|_| ()),
        "train.optimizer" => s.parse::<Optimizer>().map(|_| ()),
        "train.schedule" => s.parse::<Schedule>().map(|_| ()),
        "train.gemm_precision" => s.parse::<GemmPrecision>().map(|_| ()),
        _ => Ok(()),
    };
    parsed.map_err(|e| Error::new(format!("{origin}: `{path}` = {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<Spec> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Spec::from_toml_str(text, "t.toml", Some("t"), &sets)
    }

    #[test]
    fn task_defaults_follow_the_recipes() {
        let s = load("task = \"ptb_word\"", &[]).unwrap();
        assert_eq!((s.model.hidden, s.model.embedding, s.train.batch_size, s.train.bptt), (300, 300, 20, 35));
        assert_eq!(s.train.optimizer, Optimizer::Sgd);
        assert_eq!(s.train.latent_lr_scale, 1.0);
        let s = load("task = \"ptb_word\"\n[model]\nquantizer = \"bc\"", &[]).unwrap();
        assert!((s.train.latent_lr_scale - 2.0 * 300f64.sqrt()).abs() < 1e-12);
        let s = load("task = \"ptb_word\"\n[model]\nquantizer = \"bc\"\n[train]\nlatent_lr_scale = 1", &[]).unwrap();
        assert_eq!(s.train.latent_lr_scale, 1.0);
        let s = load("task = \"seq_mnist\"", &[]).unwrap();
        assert!((s.train.lr_decay.powi(200) - 0.5).abs() < 1e-12);
        assert_eq!(s.name, "t");
    }

    #[test]
    fn overrides_and_round_trip() {
        let s = load("task = \"ptb_char\"", &["model.hidden=128", "model.quantizer=bc", "train.lr=1"]).unwrap();
        assert_eq!(s.model.hidden, 128);
        assert_eq!(s.model.quantizer, Quantizer::Bc);
        assert_eq!(s.train.lr, 1.0);
        let again = load(&s.to_toml(), &[]).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn errors_name_the_key_and_the_allowed_values() {
        let e = load("task = \"ptb_char\"\n[model]\nhiden = 3", &[]).unwrap_err().0;
        assert!(e.contains("unknown key `model.hiden`") && e.contains("hidden"), "{e}");
        let e = load("task = \"ptb_char\"\n[model]\nhidden = \"big\"", &[]).unwrap_err().0;
        assert!(e.contains("`model.hidden` must be an integer"), "{e}");
        let e = load("task = \"ptb_char\"\n[model]\nhidden = 0", &[]).unwrap_err().0;
        assert!(e.contains("`model.hidden` = 0"), "{e}");
        let e = load("task = \"mnist\"", &[]).unwrap_err().0;
        assert!(e.contains("allowed: ptb_char"), "{e}");
        let e = load("task = \"ptb_char\"\n[model]\nquantizer = \"xnor\"", &[]).unwrap_err().0;
        assert!(e.contains("allowed: fp, bc"), "{e}");
        let e = load("[model]\nhidden = 3", &[]).unwrap_err().0;
        assert!(e.contains("missing key `task`"), "{e}");
        let e = load("task = \"ptb_char\"", &["train.bptt=-1"]).unwrap_err().0;
        assert!(e.contains("must not be negative"), "{e}");
        let e = load("task = \"ptb_char\"\nmodel = 3", &[]).unwrap_err().0;
        assert!(e.contains("must be a section"), "{e}");
        let e = load("task = ", &[]).unwrap_err().0;
        assert!(e.starts_with("t.toml: invalid TOML"), "{e}");
    }
}
