//! main.cf: reading it the way Postfix does, expanding `$name` references,
//! `-o name=value` overrides, and typed getters with Postfix's defaults,
//! bounds and time units.
//!
//! Follows `global/mail_conf.c` (locating and reading main.cf),
//! `util/dict.c:dict_load_fp` and `util/readlline.c` (logical lines),
//! `util/split_nameval.c`, and `global/mail_conf_{int,bool,time,str}.c`
//! (typed getters that store their default back, so that later `$name`
//! expansions and per-transport lookups see it).

mod domain_list;
mod expand;
mod params;
pub mod table;

pub use domain_list::{DomainList, Verdict};
pub use expand::{expand, parse_compat_level};
pub use params::{FeedbackParam, Params, TransportParams, TransportTable};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Errors from reading or interpreting main.cf. Postfix treats all of them as
/// fatal at startup; so does rqmgr (a clear `fatal:` line, exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// main.cf could not be opened or read.
    #[error("open {}: {}", path.display(), crate::log::errno_text(source))]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A logical line is not `name = value`.
    #[error("{path}, line {line}: {what}: \"{text}\"")]
    Syntax {
        path: PathBuf,
        line: usize,
        what: &'static str,
        text: String,
    },
    /// A `-o` option without `=`.
    #[error("invalid \"-o {0}\" option value")]
    BadOverride(String),
    /// `$name` expansion failed (unbalanced braces, empty name...).
    #[error("dictionary mail_dict: macro processing error: {0}")]
    Macro(String),
    /// An integer parameter that is not a number.
    #[error("bad numerical configuration: {name} = {value}")]
    BadInt { name: String, value: String },
    /// A boolean parameter other than yes/no.
    #[error("bad boolean configuration: {name} = {value}")]
    BadBool { name: String, value: String },
    /// A time parameter with a bad number or unit.
    #[error("parameter {name}: bad time value or unit: {value}")]
    BadTime { name: String, value: String },
    /// A number outside the parameter's bounds.
    #[error("invalid {name} parameter value {value} {cmp} {limit}")]
    OutOfRange {
        name: String,
        value: i64,
        cmp: &'static str,
        limit: i64,
    },
    /// A time outside the parameter's bounds (`bound`: `min` or `max`).
    #[error("invalid {name}: {value} ({bound} {limit})")]
    TimeOutOfRange {
        name: String,
        value: i64,
        bound: &'static str,
        limit: i64,
    },
    /// A string parameter that is too short or too long.
    #[error("bad string length {len} < {min}: {name} = {value}")]
    BadLength {
        name: String,
        value: String,
        len: usize,
        min: usize,
    },
}

/// The main.cf dictionary: raw values from main.cf and `-o` overrides, plus
/// every default a typed getter has stored back.
///
/// Lookups expand `$name` recursively against this dictionary only, as
/// Postfix's `mail_conf_lookup_eval` does.
#[derive(Debug, Clone, Default)]
pub struct MainCf {
    values: HashMap<String, String>,
    /// The directory main.cf was read from (`config_directory`).
    pub config_directory: PathBuf,
    /// Warnings collected while reading (`overriding earlier entry`...), to be
    /// logged once logging is up.
    pub warnings: Vec<String>,
}

/// Splits `name = value`, trimming white space around both, like
/// `util/split_nameval.c`. Returns the reason on failure.
pub fn split_nameval(line: &str) -> Result<(&str, &str), &'static str> {
    let line = line.trim_start();
    let name_end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .ok_or("missing '=' after attribute name")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("missing attribute name");
    }
    let rest = line[name_end..].trim_start();
    let value = rest
        .strip_prefix('=')
        .ok_or("missing '=' after attribute name")?;
    Ok((name, value.trim()))
}

/// Joins physical lines into logical lines the way `util/readlline.c` does:
/// comments and blank lines are dropped, a line starting with white space
/// continues the previous one. Returns (first line number, text).
fn logical_lines(text: &str) -> (Vec<(usize, String)>, Vec<usize>) {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut orphans = Vec::new();
    for (idx, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(|c: char| c.is_whitespace()) {
            match out.last_mut() {
                Some((_, prev)) => prev.push_str(line),
                None => orphans.push(idx + 1),
            }
        } else {
            out.push((idx + 1, line.to_string()));
        }
    }
    (out, orphans)
}

impl MainCf {
    /// Reads `<dir>/main.cf`.
    ///
    /// Errors: [`ConfigError::Open`] if the file cannot be read,
    /// [`ConfigError::Syntax`] for a line that is not `name = value`.
    pub fn load(dir: &Path) -> Result<MainCf, ConfigError> {
        let path = dir.join("main.cf");
        let bytes = std::fs::read(&path).map_err(|source| ConfigError::Open {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let mut cf = MainCf::parse(&text, &path)?;
        cf.config_directory = dir.to_path_buf();
        cf.values
            .entry("config_directory".into())
            .or_insert_with(|| dir.display().to_string());
        Ok(cf)
    }

    /// Parses main.cf text; `path` is used in messages only.
    ///
    /// Errors: [`ConfigError::Syntax`] for a line that is not `name = value`.
    pub fn parse(text: &str, path: &Path) -> Result<MainCf, ConfigError> {
        let mut cf = MainCf::default();
        let (lines, orphans) = logical_lines(text);
        for n in orphans {
            cf.warnings.push(format!(
                "{}: logical line must not start with whitespace: line {n}",
                path.display()
            ));
        }
        for (lineno, line) in lines {
            let (name, value) = split_nameval(&line).map_err(|what| ConfigError::Syntax {
                path: path.to_path_buf(),
                line: lineno,
                what,
                text: line.clone(),
            })?;
            if let Some(old) = cf.values.get(name) {
                if old != value {
                    cf.warnings.push(format!(
                        "{}, line {lineno}: overriding earlier entry: {name}={old}",
                        path.display()
                    ));
                }
            }
            cf.values.insert(name.to_string(), value.to_string());
        }
        Ok(cf)
    }

    /// Applies one `-o name=value` override.
    ///
    /// Errors: [`ConfigError::BadOverride`] when there is no `=`.
    pub fn apply_override(&mut self, opt: &str) -> Result<(), ConfigError> {
        let (name, value) =
            split_nameval(opt).map_err(|_| ConfigError::BadOverride(opt.to_string()))?;
        self.values.insert(name.to_string(), value.to_string());
        Ok(())
    }

    /// Sets a raw value, as `set_mail_conf_str` does.
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_string(), value.to_string());
    }

    /// The raw (unexpanded) value of `name`.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The expanded value of `name`, or `None` if it is not defined.
    ///
    /// Errors: [`ConfigError::Macro`] when expansion fails.
    pub fn lookup(&self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) => expand(v, &|n| self.values.get(n).cloned()).map(Some),
        }
    }

    /// The expanded value of `name`; if it is not defined, `default` is
    /// stored and expanded (`get_mail_conf_str`). `min`/`max` are length bounds
    /// (0 = none).
    ///
    /// Errors: expansion failures, or a value shorter than `min`.
    pub fn get_str(
        &mut self,
        name: &str,
        default: &str,
        min: usize,
        max: usize,
    ) -> Result<String, ConfigError> {
        let value = match self.lookup(name)? {
            Some(v) => v,
            None => {
                self.set(name, default);
                self.lookup(name)?.unwrap_or_default()
            }
        };
        if value.len() < min || (max > 0 && value.len() > max) {
            return Err(ConfigError::BadLength {
                name: name.into(),
                len: value.len(),
                min,
                value,
            });
        }
        Ok(value)
    }

    /// An integer parameter (`get_mail_conf_int`): `min`/`max` are checked only
    /// when non-zero.
    ///
    /// Errors: [`ConfigError::BadInt`], [`ConfigError::OutOfRange`].
    pub fn get_int(
        &mut self,
        name: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        let text = match self.lookup(name)? {
            Some(v) => v,
            None => {
                self.set(name, &default.to_string());
                default.to_string()
            }
        };
        let value = parse_int(&text).ok_or_else(|| ConfigError::BadInt {
            name: name.into(),
            value: text.clone(),
        })?;
        check_range(name, value, min, max)?;
        Ok(value)
    }

    /// A boolean parameter: `yes` or `no`, any case (`get_mail_conf_bool`).
    ///
    /// Errors: [`ConfigError::BadBool`].
    pub fn get_bool(&mut self, name: &str, default: bool) -> Result<bool, ConfigError> {
        let text = match self.lookup(name)? {
            Some(v) => v,
            None => {
                self.set(name, if default { "yes" } else { "no" });
                return Ok(default);
            }
        };
        match text.to_ascii_lowercase().as_str() {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => Err(ConfigError::BadBool {
                name: name.into(),
                value: text,
            }),
        }
    }

    /// A time parameter in seconds (`get_mail_conf_time`). `default` carries
    /// the default unit (e.g. `"5d"`), used when the value has no unit letter.
    ///
    /// Errors: [`ConfigError::BadTime`], [`ConfigError::OutOfRange`].
    pub fn get_time(
        &mut self,
        name: &str,
        default: &str,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        let unit = default_unit(default);
        let text = match self.lookup(name)? {
            Some(v) => v,
            None => {
                self.set(name, default);
                self.lookup(name)?.unwrap_or_default()
            }
        };
        let value = conv_time(&text, unit).ok_or_else(|| ConfigError::BadTime {
            name: name.into(),
            value: text.clone(),
        })?;
        check_range(name, value, min, max).map_err(|e| match e {
            ConfigError::OutOfRange {
                name,
                value,
                cmp,
                limit,
            } => ConfigError::TimeOutOfRange {
                name,
                value,
                bound: if cmp == "<" { "min" } else { "max" },
                limit,
            },
            other => other,
        })?;
        Ok(value)
    }

    /// A per-transport integer (`get_mail_conf_int2`): `<transport><suffix>`
    /// if set, else `fallback` (the already-parsed global default).
    ///
    /// Errors: as [`MainCf::get_int`].
    pub fn get_int2(
        &mut self,
        transport: &str,
        suffix: &str,
        fallback: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        self.get_int(&format!("{transport}{suffix}"), fallback, min, max)
    }

    /// A per-transport time in seconds (`get_mail_conf_time2`).
    ///
    /// Errors: as [`MainCf::get_time`].
    pub fn get_time2(
        &mut self,
        transport: &str,
        suffix: &str,
        fallback: i64,
        unit: char,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        self.get_time(
            &format!("{transport}{suffix}"),
            &format!("{fallback}{unit}"),
            min,
            max,
        )
    }

    /// A per-transport string (`get_mail_conf_str2`).
    ///
    /// Errors: as [`MainCf::get_str`].
    pub fn get_str2(
        &mut self,
        transport: &str,
        suffix: &str,
        fallback: &str,
        min: usize,
        max: usize,
    ) -> Result<String, ConfigError> {
        self.get_str(&format!("{transport}{suffix}"), fallback, min, max)
    }
}

fn check_range(name: &str, value: i64, min: i64, max: i64) -> Result<(), ConfigError> {
    if min != 0 && value < min {
        return Err(ConfigError::OutOfRange {
            name: name.into(),
            value,
            cmp: "<",
            limit: min,
        });
    }
    if max != 0 && value > max {
        return Err(ConfigError::OutOfRange {
            name: name.into(),
            value,
            cmp: ">",
            limit: max,
        });
    }
    Ok(())
}

/// Parses an integer the way `strtol` + "whole string consumed" does, limited
/// to the range of a C `int`.
fn parse_int(text: &str) -> Option<i64> {
    let v: i64 = text.trim_start().parse().ok()?;
    (i32::MIN as i64..=i32::MAX as i64)
        .contains(&v)
        .then_some(v)
}

fn default_unit(default: &str) -> char {
    default
        .chars()
        .rev()
        .find(|c| c.is_ascii_alphabetic())
        .unwrap_or('s')
}

/// Converts a Postfix time value to seconds (`global/conv_time.c`): a
/// non-negative decimal number and an optional unit `s m h d w`; characters
/// after the unit letter are ignored; without a unit, `default_unit` applies.
/// Returns `None` for a bad number, unit, or overflow of a C `int`.
pub fn conv_time(text: &str, default_unit: char) -> Option<i64> {
    let t = text.trim_start();
    let digits_end = t
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '+' || c == '-'))))
        .map_or(t.len(), |(i, _)| i);
    let n: i64 = t[..digits_end].parse().ok()?;
    if n < 0 || n > i32::MAX as i64 {
        return None;
    }
    let unit = t[digits_end..].chars().next().unwrap_or(default_unit);
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        'w' => 604800,
        _ => return None,
    };
    if mult > 1 && n >= i32::MAX as i64 / mult {
        return None;
    }
    Some(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_error_reads_like_postfix() {
        let e = MainCf::load(Path::new("/nonexistent-rqmgr-dir")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "open /nonexistent-rqmgr-dir/main.cf: No such file or directory"
        );
    }

    fn cf(text: &str) -> MainCf {
        MainCf::parse(text, Path::new("main.cf")).unwrap()
    }

    #[test]
    fn logical_lines_and_overrides() {
        let mut c = cf("# comment\n\na = 1\nb = x\n  y\nb = z\n");
        assert_eq!(c.raw("a"), Some("1"));
        assert_eq!(c.raw("b"), Some("z"));
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("overriding earlier entry: b=x  y"));
        c.apply_override("a=2").unwrap();
        assert_eq!(c.get_int("a", 0, 0, 0).unwrap(), 2);
        assert!(c.apply_override("novalue").is_err());
    }

    #[test]
    fn typed_getters_store_defaults() {
        let mut c = cf("x = $queue_run_delay\n");
        assert_eq!(c.get_time("queue_run_delay", "300s", 1, 0).unwrap(), 300);
        assert_eq!(c.lookup("x").unwrap().unwrap(), "300s");
        assert!(c.get_bool("flag", true).unwrap());
        assert_eq!(c.get_int("n", 20, 0, 0).unwrap(), 20);
        assert_eq!(
            c.get_int2("smtp", "_destination_concurrency_limit", 20, 0, 0)
                .unwrap(),
            20
        );
    }

    #[test]
    fn time_units() {
        assert_eq!(conv_time("3", 'd'), Some(3 * 86400));
        assert_eq!(conv_time("300", 's'), Some(300));
        assert_eq!(conv_time("2h", 's'), Some(7200));
        assert_eq!(conv_time("1week", 's'), Some(604800));
        assert_eq!(conv_time("5x", 's'), None);
        assert_eq!(conv_time("-1", 's'), None);
        assert_eq!(conv_time("", 's'), None);
        assert_eq!(conv_time("99999999999", 's'), None);
    }

    #[test]
    fn bad_values() {
        let mut c = cf("i = 12x\nb = maybe\nt = 5q\nlow = 0\n");
        assert!(matches!(
            c.get_int("i", 1, 0, 0),
            Err(ConfigError::BadInt { .. })
        ));
        assert!(matches!(
            c.get_bool("b", true),
            Err(ConfigError::BadBool { .. })
        ));
        assert!(matches!(
            c.get_time("t", "1s", 0, 0),
            Err(ConfigError::BadTime { .. })
        ));
        assert!(matches!(
            c.get_int("low", 1, 1, 0),
            Err(ConfigError::OutOfRange { .. })
        ));
    }

    #[test]
    fn syntax_error() {
        assert!(MainCf::parse("just words\n", Path::new("m")).is_err());
    }
}
