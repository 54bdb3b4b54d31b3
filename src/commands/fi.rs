//! `fi key-material|decrypt|encrypt`: the FI routes for a script. The same JSON as `POST /v1/fi/<op>`
//! on stdin, the same answer on stdout (exit 0); an error as `aa-token-broker: <code>: <message>` on
//! stderr (exit 1); a configuration mistake exits 2. `key-material` and `decrypt` need the KEK
//! (`--fi-kek-file`, or `fi_kek_file` in `--config`); `encrypt` holds no key of ours and needs none.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::SystemTime;

use super::{config_error, failure, log_or_exit};
use crate::config::cli::FiCommandArgs;
use crate::config::fi::fi_settings;
use crate::config::{ConfigError, file};
use crate::entity::EntityId;
use crate::fi::wire::Fi;

pub fn run(args: &FiCommandArgs) -> ExitCode {
    if let Err(code) = log_or_exit(&args.log) {
        return code;
    }
    let file = match &args.entity.config {
        Some(path) => match file::load(path) {
            Ok(file) => file,
            Err(e) => return config_error(&e),
        },
        None => file::FileConfig::default(),
    };
    // The flag's key belongs to --entity-id, the file's only entity, or (with neither) a placeholder:
    // a script with one KEK need not name the entity.
    let ids: Vec<EntityId> = match (&args.entity.entity_id, file.entities.as_slice()) {
        (Some(id), _) => vec![id.clone()],
        (None, [only]) => EntityId::parse(&only.id).into_iter().collect(),
        (None, []) => EntityId::parse("default").into_iter().collect(),
        (None, _) => Vec::new(),
    };
    let settings = match fi_settings(&args.fi, &file, &ids, None) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    let fi = Fi::new(settings.keks);
    if !fi.enabled() && args.operation != "encrypt" {
        return config_error(&ConfigError::new(
            crate::config::settings::FI_KEK_FILE,
            "no key-encryption key given",
        ));
    }
    let mut body = Vec::new();
    let cap = settings.max_body_bytes as u64 + 1;
    if let Err(e) = std::io::stdin().take(cap).read_to_end(&mut body) {
        return failure(format!("cannot read stdin: {e}"));
    }
    if body.len() > settings.max_body_bytes {
        return failure(format!(
            "bad_request: the input is larger than {} bytes (--fi-max-body-bytes)",
            settings.max_body_bytes
        ));
    }
    let entity = args.entity.entity_id.as_ref().map(EntityId::as_str);
    let now = SystemTime::now();
    let answer = match args.operation.as_str() {
        "key-material" => fi.key_material(entity, &body, now),
        "decrypt" => fi.decrypt(&mut body, now).map(|_| body),
        _ => fi.encrypt(&mut body, now).map(|_| body),
    };
    match answer {
        Ok(json) => {
            let mut out = std::io::stdout().lock();
            if out
                .write_all(&json)
                .and_then(|()| out.write_all(b"\n"))
                .is_err()
            {
                return failure("cannot write the answer to stdout");
            }
            ExitCode::SUCCESS
        }
        Err(error) => failure(error),
    }
}
