//! Authentication (issue 14, ADR 0029): SCRAM-SHA-256 credentials and the server's side of the
//! exchange, pure ([`scram`]). Users are kept in the Raft metadata (`meta::state`, `UpsertUser`).
//! The listeners do not ask for it yet: the exchange on the Kafka and native listeners, ACLs and
//! `auth_required` are the next steps of ADR 0029.

pub mod scram;
