//! Where a setting comes from: the command line, the environment, a TOML file, or its
//! default, in that order of precedence.
//!
//! Every flag has a config-file key (its long name with `-` replaced by `_`) and an
//! environment variable (`RINGPUSH_` and the key in capitals), derived from the clap
//! definition itself, so a flag added to [`Config`] gets both without a line here. The
//! layers are merged by rewriting them into one argument list that clap parses once: a
//! value from the environment or the file goes through the same value parser, with the
//! same error message, as the flag would.
//!
//! Invariants:
//! - A setting given on the command line is never overridden by the environment or the
//!   file; one given in the environment is never overridden by the file.
//! - An unknown key in the file, or a value of the wrong shape, stops start-up with a
//!   message naming the file and the key: a typo never silently falls back to a default.
//! - [`print`] writes a file [`Config::load`] reads back to the same configuration, with
//!   secrets masked (their keys commented out).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use super::Config;

/// The prefix of every environment variable the node reads its settings from.
pub const ENV_PREFIX: &str = "RINGPUSH_";

/// Flags that are about loading the configuration, not part of it: no key, no variable.
const NOT_SETTINGS: &[&str] = &["config", "print-config", "help", "version"];

/// Keys whose values are secrets: printed commented out and masked.
const SECRET_KEYS: &[&str] = &["admin_token", "admin_publish_token"];

impl Config {
    /// The configuration from the process's arguments and environment (and the file
    /// `--config` names). Exits with clap's message and status 2 on a bad setting, as a bad
    /// flag always did.
    pub fn load() -> Config {
        let env: Vec<(String, String)> = std::env::vars().collect();
        match Config::load_from(std::env::args_os(), &env) {
            Ok(cfg) => cfg,
            Err(e) => e.exit(),
        }
    }

    /// [`Config::load`] with the arguments and environment given (tests).
    pub fn load_from(
        args: impl IntoIterator<Item = impl Into<OsString>>,
        env: &[(String, String)],
    ) -> Result<Config, clap::Error> {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        Config::from_arg_matches(&merge(&args, env)?)
    }
}

/// The TOML text of the effective configuration, every setting with its value (defaults
/// included), unset optional ones commented out, secrets masked.
pub fn print(args: &[OsString], env: &[(String, String)]) -> Result<String, clap::Error> {
    let matches = merge(args, env)?;
    Config::from_arg_matches(&matches)?;
    let mut out = String::from(
        "# ringpush configuration (ringpush --print-config): read back with --config FILE.\n",
    );
    for arg in Config::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if !NOT_SETTINGS.contains(&long) {
            out.push_str(&render(arg, long, &matches));
        }
    }
    Ok(out)
}

/// Parses the command line with every setting it lacks filled from the environment, then
/// from the file: one argument list, parsed once, so every value meets its flag's parser.
fn merge(args: &[OsString], env: &[(String, String)]) -> Result<ArgMatches, clap::Error> {
    let command = Config::command();
    let flags_only = command.clone().try_get_matches_from(args)?;
    let file = match flags_only.get_one::<std::path::PathBuf>("config") {
        Some(path) => read_file(path).map_err(|e| invalid(&command, e))?,
        None => BTreeMap::new(),
    };
    let mut merged = args.to_vec();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&long)
            || flags_only.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
        {
            continue;
        }
        let key = key_of(long);
        let values = match env_value(env, &key) {
            Some(value) => split_env(arg, value),
            None => match file.get(&key) {
                Some(value) => file_values(&key, value).map_err(|e| invalid(&command, e))?,
                None => continue,
            },
        };
        push_flag(&mut merged, arg, long, &values).map_err(|e| invalid(&command, e))?;
    }
    command.try_get_matches_from(&merged)
}

/// One `key = value` line (or a commented one for an unset or secret setting).
fn render(arg: &clap::Arg, long: &str, matches: &ArgMatches) -> String {
    let key = key_of(long);
    let id = arg.get_id().as_str();
    if is_switch(arg) {
        return format!("{key} = {}\n", matches.get_flag(id));
    }
    let raw: Vec<String> = matches
        .get_raw(id)
        .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    if raw.is_empty() {
        return format!("# {key} = (not set)\n");
    }
    if SECRET_KEYS.contains(&key.as_str()) {
        return format!("# {key} = \"(secret, not printed)\"\n");
    }
    let quoted: Vec<String> = raw.iter().map(|v| toml_string(v)).collect();
    if takes_many(arg) {
        format!("{key} = [{}]\n", quoted.join(", "))
    } else {
        format!("{key} = {}\n", quoted[0])
    }
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// The config-file key of a long flag name.
pub fn key_of(long: &str) -> String {
    long.replace('-', "_")
}

/// The environment variable of a config-file key.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

fn env_value<'e>(env: &'e [(String, String)], key: &str) -> Option<&'e str> {
    let name = env_name(key);
    env.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// A list in the environment is comma-separated (one value for a single-valued flag).
fn split_env(arg: &clap::Arg, value: &str) -> Vec<String> {
    if takes_many(arg) {
        value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect()
    } else {
        vec![value.to_string()]
    }
}

fn is_switch(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

fn takes_many(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// Appends the flag with its values to the argument list (a switch only when true).
fn push_flag(
    merged: &mut Vec<OsString>,
    arg: &clap::Arg,
    long: &str,
    values: &[String],
) -> Result<(), String> {
    if is_switch(arg) {
        let [value] = values else {
            return Err(format!("{}: takes true or false", key_of(long)));
        };
        match value.as_str() {
            "true" | "1" | "yes" | "on" => merged.push(format!("--{long}").into()),
            "false" | "0" | "no" | "off" | "" => {}
            other => {
                return Err(format!(
                    "{}: takes true or false, not {other:?}",
                    key_of(long)
                ))
            }
        }
        return Ok(());
    }
    for value in values {
        // `--flag=value`, so a value that starts with `-` is not taken for a flag.
        merged.push(format!("--{long}={value}").into());
    }
    Ok(())
}

/// The values of one file key as strings (what the flag would have been given).
fn file_values(key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "{key}: a {} is not a setting value (use a string, number or boolean)",
                other.type_str()
            )),
        }
    };
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

/// Reads the file's top-level table, refusing keys no flag has.
fn read_file(path: &Path) -> Result<BTreeMap<String, toml::Value>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("--config {}: {e}", path.display()))?;
    let known: Vec<String> = Config::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|long| !NOT_SETTINGS.contains(long))
        .map(key_of)
        .collect();
    for key in table.keys() {
        if !known.contains(key) {
            return Err(format!(
                "--config {}: unknown key {key:?} (keys are the flags' long names with _ for -)",
                path.display()
            ));
        }
    }
    Ok(table.into_iter().collect())
}

fn invalid(command: &clap::Command, message: String) -> clap::Error {
    command
        .clone()
        .error(clap::error::ErrorKind::InvalidValue, message)
}
