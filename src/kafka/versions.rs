//! The Kafka APIs and versions Keel serves, and why (ADR 0026).

use kafka_protocol::messages::ApiKey;

/// Highest `ApiVersions` version Keel serves; a client asking higher gets the v0 fallback.
pub const API_VERSIONS_MAX: i16 = 4;

/// Every API Keel serves, with the versions it advertises. All inside the crate's ranges (a test
/// checks), except Produce v0-2: advertised because librdkafka turns compression on only when the
/// broker's Produce range includes v0 (Kafka 4 does the same, KAFKA-18659), refused if they come
/// (clients use the highest version both sides have, 7 or more).
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, API_VERSIONS_MAX),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
];

/// Produce versions below this are advertised, not served (see [`SERVED`]).
pub const PRODUCE_MIN_SERVED: i16 = 3;

pub fn is_served_api(api: ApiKey) -> bool {
    SERVED.iter().any(|(served, _, _)| *served == api)
}

/// Whether a request of `api` at `version` is decoded and answered.
pub fn accepts(api: ApiKey, version: i16) -> bool {
    if api == ApiKey::Produce && version < PRODUCE_MIN_SERVED {
        return false;
    }
    SERVED.iter().any(|(served, min, max)| *served == api && (*min..=*max).contains(&version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_version_is_one_the_crate_decodes_and_encodes() {
        for (api, min, max) in SERVED {
            let crate_range = api.valid_versions();
            for version in *min..=*max {
                if accepts(*api, version) {
                    assert!(
                        crate_range.min <= version && version <= crate_range.max,
                        "{api:?} v{version} outside the crate's {crate_range:?}"
                    );
                }
            }
        }
        assert!(!accepts(ApiKey::Produce, 2) && accepts(ApiKey::Produce, 3));
        assert!(!accepts(ApiKey::Fetch, 13), "v13+ names topics by id only");
    }
}
