//! Any text as `inject`'s input, through the whole rewrite within its limits (alias budget, nesting,
//! nodes, output): never a panic, never more output than the limit given.
#![no_main]

use aa_token_broker::entity::EntityId;
use aa_token_broker::inject::{Iam, InjectOptions, Mode, inject_within};
use libfuzzer_sys::fuzz_target;

/// Small, so that the output bound is reached by small inputs too.
const MAX_OUTPUT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(entity_id) = EntityId::parse("FIU-FUZZ") else { return };
    let options = InjectOptions {
        entity_id,
        secret_name: "fiu-entity-secret".into(),
        secret_key: "secret".into(),
        image: "example/broker:1".into(),
        iam: Iam::Environment("sandbox".into()),
        port: 7373,
        admin_port: (data.len() % 3 == 0).then_some(9373),
        mode: [Mode::Native, Mode::Regular][data.len() % 2],
        selection: Default::default(),
        openshift: data.len() % 5 == 0,
    };
    if let Ok(injected) = inject_within(text, &options, MAX_OUTPUT) {
        assert!(injected.output.len() <= MAX_OUTPUT);
    }
});
