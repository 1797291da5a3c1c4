//! `sluice token --secret S --task PATTERN... --ttl 1h`: prints a subscriber
//! token (HS256 JWT) for the edge's `--auth-secret`.

use clap::Args;

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The signing secret (the edge's first `--auth-secret`).
    #[arg(long, env = "SLUICE_AUTH_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Task id or `prefix*` pattern the token may read (repeatable).
    #[arg(long = "task", required = true)]
    pub tasks: Vec<String>,
    /// Lifetime, e.g. `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// Subject (e.g. a user id), shown in edge logs.
    #[arg(long)]
    pub sub: Option<String>,
}

pub fn run(a: TokenArgs) -> anyhow::Result<()> {
    // The secret may come from SLUICE_AUTH_SECRET as a comma-separated list
    // (the edge's rotation format): the first one signs.
    let secret = a.secret.split(',').next().unwrap_or_default();
    let token = sluice_broker::token::issue(secret, &a.tasks, a.ttl, a.sub.as_deref())?;
    println!("{token}");
    Ok(())
}
