//! `certify`: runs the certification cases a sidecar can decide ([`crate::certify`]) against an ingress
//! and prints a pass/fail table by case id. Exit 0 when every case passes, 1 when one fails, 2 for a
//! configuration mistake.

use std::process::ExitCode;

use super::{config_error, current_thread_runtime, failure};
use crate::certify::{self, Target};
use crate::config::ConfigError;
use crate::config::cli::CertifyArgs;
use crate::entity::Role;

pub fn run(args: &CertifyArgs) -> ExitCode {
    let Some(role) = Role::parse(&args.role) else {
        return config_error(&ConfigError::new("--role", "must be FIU, FIP or AA"));
    };
    for (flag, url) in [
        ("--ingress", &args.ingress),
        ("--simulator", &args.simulator),
    ] {
        if reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
            return config_error(&ConfigError::new(flag, "must be an http(s) URL"));
        }
    }
    let target = Target {
        simulator: args.simulator.trim_end_matches('/').to_string(),
        ingress: args.ingress.clone(),
        deployment: role,
        entity_id: args.entity_id.as_str().to_string(),
    };
    let rt = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let ids: Vec<&str> = args.cases.iter().map(String::as_str).collect();
    let outcomes = if ids.is_empty() {
        rt.block_on(certify::run(target))
    } else {
        rt.block_on(certify::run_ids(target, &ids))
    };
    match outcomes {
        Ok(outcomes) => {
            print!("{}", certify::table(&outcomes));
            if outcomes.iter().all(|o| o.passed) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => failure(format!("certify: {e}")),
    }
}
