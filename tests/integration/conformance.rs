//! The conformance suite: the certification cases a sidecar can decide (`aa_token_broker::certify::cases`),
//! one test per case id, against an FIU, an FIP and an AA deployment. Each test starts the simulator (as
//! the IAM and the CR, whose peers sign the requests) and a broker for the deployment's entity, and runs
//! the case through `/v1/authorize/{ReBIT path}` exactly as `aa-token-broker certify` does against an
//! ingress. Where the suite contradicts itself, `certify::cases` notes the choice made.

use std::time::Duration;

use crate::common::*;
use aa_token_broker::certify::{self, Target};
use aa_token_broker::entity::Role;

/// The entity deployed for `role`, and its secret.
fn deployed(role: Role) -> (&'static str, &'static str) {
    match role {
        Role::Fiu => ("FIU-DEPLOYED", "fiu-deployed-secret"),
        Role::Fip => ("FIP-DEPLOYED", "fip-deployed-secret"),
        Role::Aa => ("AA-DEPLOYED", "aa-deployed-secret"),
    }
}

/// A broker deployed for `role`'s entity, owning the simulator that is its IAM and CR; ready.
async fn deploy(role: Role) -> TestBroker {
    let (entity, secret) = deployed(role);
    let iam = Iam::start(86_400).await;
    iam.sim
        .add_entity(entity, secret, Duration::from_secs(90 * 86_400));
    iam.sim.cr_register(entity, role.as_str()).unwrap();
    let mut options = BrokerOptions::one(inline_secret(secret));
    options.entities = vec![(entity.to_string(), inline_secret(secret))];
    let broker = TestBroker::owning(iam, options).await;
    broker.wait_ready(Duration::from_secs(10)).await;
    broker
}

/// Runs one case against a fresh deployment of its role.
async fn conformance(id: &str) {
    let case = certify::cases::by_id(id).expect("a known case");
    let deployment = deploy(case.deployment).await;
    let outcomes = certify::run_ids(
        Target {
            simulator: deployment.iam().root(),
            ingress: format!("http://{}/v1/authorize", deployment.addr),
            deployment: case.deployment,
            entity_id: deployed(case.deployment).0.to_string(),
        },
        &[id],
    )
    .await
    .expect("the case runs");
    deployment.stop().await;
    assert!(outcomes[0].passed, "{id}: {}", outcomes[0].detail);
}

/// `aa-token-broker certify`, the binary, against a deployment: a table by case id and exit 0; against an
/// ingress that checks nothing, the failures named and exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certify_command_prints_a_table_by_case_id() {
    let deployment = deploy(Role::Fiu).await;
    let run = |ingress: String, cases: &[&str]| {
        let mut command = crate::common::process::broker_command();
        command.args([
            "certify",
            "--ingress",
            &ingress,
            "--simulator",
            &deployment.iam().root(),
            "--role",
            "FIU",
            "--entity-id",
            deployed(Role::Fiu).0,
        ]);
        for case in cases {
            command.args(["--case", case]);
        }
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let all = run(format!("http://{}/v1/authorize", deployment.addr), &[])
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&all.stdout).to_string();
    assert_eq!(
        all.status.code(),
        Some(0),
        "{table}{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let fiu_cases = certify::cases::for_deployment(Role::Fiu).count();
    assert!(table.contains("pass  FIU_1043"), "{table}");
    assert!(
        table.contains(&format!("{fiu_cases} passed, 0 failed")),
        "{table}"
    );
    // An ingress that lets everything through (here: the broker's health route) fails the refusals.
    let open = run(
        format!("http://{}/healthz?", deployment.addr),
        &["FIU_1036", "FIU_1013"],
    )
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&open.stdout).to_string();
    assert_eq!(open.status.code(), Some(1), "{table}");
    assert!(table.contains("FAIL  FIU_1036"), "{table}");
    assert!(table.contains("0 passed, 2 failed"), "{table}");
    // A mistake in the arguments is one line and exit 2.
    let bad = tokio::task::spawn_blocking(|| {
        crate::common::process::broker_command()
            .args([
                "certify",
                "--ingress",
                "x",
                "--simulator",
                "http://a",
                "--role",
                "CR",
                "--entity-id",
                "E",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    deployment.stop().await;
}

macro_rules! cases {
    ($($name:ident => $id:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                conformance($id).await;
            }
        )*

        /// Every case of `certify::cases` has a test here.
        #[test]
        fn every_case_has_a_test() {
            let tested = [$($id),*];
            for case in certify::cases::CASES {
                assert!(tested.contains(&case.id), "{} has no test", case.id);
            }
        }
    };
}

cases! {
    fiu_1004_consent_notification_passes => "FIU_1004",
    fiu_1005_consent_notification_from_an_alternate_aa_id => "FIU_1005",
    fiu_1006_consent_notification_with_fip_as_notifier => "FIU_1006",
    fiu_1010_1_timestamp_15_minutes_ahead => "FIU_1010_1",
    fiu_1010_2_timestamp_15_minutes_behind => "FIU_1010_2",
    fiu_1013_unsupported_version => "FIU_1013",
    fiu_1014_1_timestamp_in_words => "FIU_1014_1",
    fiu_1014_2_timestamp_without_zone => "FIU_1014_2",
    fiu_1036_consent_notification_with_an_invalid_signature => "FIU_1036",
    fiu_1042_invalid_api_key => "FIU_1042",
    fiu_1043_alternate_aa_api_key => "FIU_1043",
    fiu_2002_fi_notification_passes => "FIU_2002",
    fiu_2003_unsupported_version => "FIU_2003",
    fiu_2005_fi_notification_from_an_alternate_aa_id => "FIU_2005",
    fiu_2007_1_txnid_of_35_characters => "FIU_2007_1",
    fiu_2007_2_txnid_of_37_characters => "FIU_2007_2",
    fiu_2008_timestamp_with_a_character_appended => "FIU_2008",
    fiu_2012_fi_notification_with_fip_as_notifier => "FIU_2012",
    fiu_2027_damaged_signature => "FIU_2027",
    fiu_2028_invalid_api_key => "FIU_2028",
    fiu_2029_alternate_aa_api_key => "FIU_2029",
    fip_1001_discovery_passes => "FIP_1001",
    fip_1027_discovery_timestamp_15_minutes_behind => "FIP_1027",
    fip_1029_discovery_unsupported_version => "FIP_1029",
    fip_1033_link_timestamp_15_minutes_ahead => "FIP_1033",
    fip_1034_link_unsupported_version => "FIP_1034",
    fip_1040_link_as_alternate_aa => "FIP_1040",
    fip_1045_delink_unsupported_version => "FIP_1045",
    fip_1056_discovery_invalid_signature => "FIP_1056",
    fip_1057_link_damaged_signature => "FIP_1057",
    fip_1058_delink_invalid_signature => "FIP_1058",
    fip_1059_link_token_get_damaged_signature => "FIP_1059",
    fip_2003_consent_timestamp_format => "FIP_2003",
    fip_2018_consent_unsupported_version => "FIP_2018",
    fip_2019_consent_notification_passes => "FIP_2019",
    fip_2021_consent_notification_timestamp_15_minutes_behind => "FIP_2021",
    fip_2022_consent_notification_unsupported_version => "FIP_2022",
    fip_2023_consent_notification_from_an_alternate_aa_id => "FIP_2023",
    fip_2026_consent_invalid_signature => "FIP_2026",
    fip_2027_consent_notification_damaged_signature => "FIP_2027",
    fip_3001_fi_request_passes => "FIP_3001",
    fip_3003_fi_request_timestamp_format => "FIP_3003",
    fip_3004_fi_request_unsupported_version => "FIP_3004",
    fip_3005_fi_request_timestamp_15_minutes_ahead => "FIP_3005",
    fip_3008_1_key_material_rsa => "FIP_3008_1",
    fip_3008_2_key_material_dh => "FIP_3008_2",
    fip_3008_3_key_material_ecc => "FIP_3008_3",
    fip_3008_4_key_material_fourq => "FIP_3008_4",
    fip_3008_5_key_material_ecmqv => "FIP_3008_5",
    fip_3008_6_key_material_other_curve => "FIP_3008_6",
    fip_3010_fi_fetch_passes => "FIP_3010",
    fip_3021_fi_request_invalid_signature => "FIP_3021",
    fip_3022_fi_fetch_damaged_signature => "FIP_3022",
    fip_3026_fi_fetch_signed_over_its_path_passes => "FIP_3026",
    fip_3027_fi_fetch_signed_by_the_regular_aa_with_an_alternate_key => "FIP_3027",
    fip_4001_heartbeat => "FIP_4001",
    aa_1001_consent_passes => "AA_1001",
    aa_1003_timestamp_format => "AA_1003",
    aa_1004_unsupported_version => "AA_1004",
    aa_1005_timestamp_16_minutes_ahead => "AA_1005",
    aa_1006_txnid_format => "AA_1006",
    aa_1015_consent_handle_get_passes => "AA_1015",
    aa_1026_consent_get_passes => "AA_1026",
    aa_1041_consent_invalid_signature => "AA_1041",
    aa_1042_consent_handle_get_damaged_signature => "AA_1042",
    aa_1043_consent_get_damaged_signature => "AA_1043",
    aa_2001_fi_request_passes => "AA_2001",
    aa_2003_fi_request_timestamp_format => "AA_2003",
    aa_2004_unsupported_version => "AA_2004",
    aa_2005_1_timestamp_16_minutes_ahead => "AA_2005_1",
    aa_2005_2_timestamp_15_minutes_behind => "AA_2005_2",
    aa_2006_txnid_format => "AA_2006",
    aa_2011_key_material => "AA_2011",
}
