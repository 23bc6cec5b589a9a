//! `keel user create|delete|list` (ADR 0029): SCRAM-SHA-256 users, kept in the Raft metadata. The
//! password is read from standard input (its first line, so `printf 'secret' | keel user create
//! alice` and an interactive line both work) and never leaves this process: the client derives the
//! salted credential and sends that.

use std::io::{BufRead, Write};

use clap::Subcommand;
use serde_json::json;

use super::{client, fail, print_line, Cli, CliError};

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user, or change its password; the password is the first line of standard input.
    Create {
        name: String,
        /// PBKDF2 iterations of the salted password (Kafka's minimum is 4096).
        #[arg(long, default_value_t = crate::auth::scram::ITERATIONS_MIN,
              value_parser = clap::value_parser!(u32).range(i64::from(crate::auth::scram::ITERATIONS_MIN)..=i64::from(crate::auth::scram::ITERATIONS_MAX)))]
        iterations: u32,
    },
    /// Delete a user.
    Delete { name: String },
    /// List the users: name, mechanism, iterations (never a key).
    List,
}

/// The password: the first line of standard input, without its line ending; never empty.
fn read_password() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|error| fail(format!("cannot read the password: {error}")))?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(fail("no password on standard input (give it as its first line)"));
    }
    Ok(password)
}

pub async fn run(cli: &Cli, command: &UserCommand) -> Result<(), CliError> {
    let client = client(cli);
    let mut out = std::io::stdout().lock();
    match command {
        UserCommand::Create { name, iterations } => {
            crate::meta::state::check_user_name(name).map_err(fail)?;
            let password = read_password()?;
            client.upsert_user(name, &password, *iterations).await?;
            print_line(
                &mut out,
                &format!("user {name} saved ({} with {iterations} iterations)", crate::auth::scram::MECHANISM),
            );
        }
        UserCommand::Delete { name } => {
            client.delete_user(name).await?;
            print_line(&mut out, &format!("deleted user {name}"));
        }
        UserCommand::List => {
            let users = client.list_users().await?;
            if cli.json {
                let users: Vec<_> = users
                    .iter()
                    .map(|u| json!({"name": u.name, "mechanism": u.mechanism, "iterations": u.iterations}))
                    .collect();
                print_line(&mut out, &json!({ "users": users }).to_string());
            } else {
                for user in &users {
                    print_line(&mut out, &format!("{}\t{}\t{} iterations", user.name, user.mechanism, user.iterations));
                }
            }
        }
    }
    out.flush().map_err(|error| fail(error.to_string()))
}
