//! The command line: `run`, `validate`, `explain`, `test`, `plan`, `config`, `schema`,
//! `version`.

mod etcd;
mod plan;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::observe::Metrics;
use crate::pool::Registry;
use crate::runtime::{self, compile::Env, explain};

#[derive(Debug, Parser)]
#[command(
    name = "portico",
    about = "Load balancer, reverse proxy and API gateway",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gateway.
    Run {
        /// The config file (YAML or JSON).
        #[arg(short, long)]
        config: PathBuf,
        /// Zero-downtime upgrade: take the listening sockets from the portico serving this
        /// upgrade socket (its `upgrade.socket`); once this process serves, that one stops
        /// accepting and drains. The config is compiled first: if it is invalid, nothing
        /// changes.
        #[arg(long, value_name = "PATH")]
        upgrade_from: Option<PathBuf>,
    },
    /// Checks a config; prints every error as FILE:LINE:COL: message, and warnings as
    /// FILE:LINE:COL: warning: message.
    Validate {
        /// The config file (YAML or JSON).
        #[arg(short, long)]
        config: PathBuf,
        /// Warnings fail validation too.
        #[arg(long)]
        strict: bool,
    },
    /// Says what portico would do with a request, without sending it.
    Explain {
        /// The config file (YAML or JSON).
        #[arg(short, long)]
        config: PathBuf,
        /// Request method, like GET.
        method: String,
        /// Absolute URL, like http://localhost:8080/users/42.
        url: String,
        /// Extra request headers, `Name: value`.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The peer (client) address: what hashing balancers, `ip_restriction` and limits by
        /// ip see; `--client` is the same.
        #[arg(
            long = "peer",
            visible_alias = "client",
            value_name = "IP",
            default_value = "127.0.0.1"
        )]
        client: std::net::IpAddr,
    },
    /// Checks golden route cases against a config, without traffic: exits 0 when every case
    /// gets what it expects, 1 when one does not, 2 when the config or the cases are invalid.
    Test {
        /// The config file (YAML or JSON).
        #[arg(short, long)]
        config: PathBuf,
        /// The cases: a YAML list of `{ request: { method, url, headers, client }, expect: {
        /// listener, route, upstream, targets, status, path } }`.
        cases: PathBuf,
    },
    /// Says what a reload to a new config would change (listeners, routes, upstreams and
    /// their targets and weights, certificates, plugins, consumers, settings), each change
    /// labelled `hitless`, `drains connections` or `needs a restart`. Exits 0 with or
    /// without changes, 2 when the new config is invalid, 1 when the old one cannot be had.
    Plan {
        /// The new config file (YAML or JSON).
        #[arg(short, long)]
        config: PathBuf,
        /// The config to compare with; without it, the running portico's, read from the
        /// admin API at the new config's `admin.listen`.
        #[arg(long, value_name = "OLD")]
        from: Option<PathBuf>,
        /// The admin API's bearer token (default: the PORTICO_ADMIN_TOKEN environment
        /// variable).
        #[arg(long, value_name = "TOKEN")]
        admin_token: Option<String>,
        /// Compare with the shared config a cluster's etcd holds: the new config is then a
        /// shared config (as `config push` takes). Repeat for several members.
        #[arg(long = "etcd", value_name = "URL", conflicts_with = "from")]
        etcd: Vec<String>,
        /// With --etcd: the key prefix (default: the node file's, else /portico/).
        #[arg(long, value_name = "PREFIX", conflicts_with = "from")]
        prefix: Option<String>,
        /// With --etcd (or instead of it): a node's own config file; both sides are merged
        /// into it, and its `cluster.etcd` names etcd when --etcd is not given.
        #[arg(long, value_name = "NODE.yaml", conflicts_with = "from")]
        node: Option<PathBuf>,
    },
    /// The shared config of a cluster in etcd (`cluster.etcd`): `push`, `pull`, `history`.
    Config {
        #[command(subcommand)]
        action: etcd::Action,
    },
    /// Prints the JSON Schema (draft 2020-12) of the config file, for editors and tools.
    Schema,
    /// Prints the version and build features.
    Version,
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            upgrade_from,
        } => {
            init_logging();
            match crate::server::reload::run(&config, upgrade_from.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err}");
                    let mut source = std::error::Error::source(&err);
                    while let Some(cause) = source {
                        tracing::error!("caused by: {cause}");
                        source = cause.source();
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { config, strict } => match compile(&config) {
            Ok(snap) => {
                for w in &snap.warnings {
                    eprintln!("{w}");
                }
                if strict && !snap.warnings.is_empty() {
                    return ExitCode::FAILURE;
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Explain {
            config,
            method,
            url,
            headers,
            client,
        } => {
            let snap = match compile(&config) {
                Ok(s) => s,
                Err(errors) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            let question = match explain::Question::parse(&method, &url, &headers) {
                Ok(mut q) => {
                    q.client = client;
                    q
                }
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            match explain::explain(&snap, &question) {
                Ok(text) => {
                    out(&text);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Test { config, cases } => {
            let snap = match compile(&config) {
                Ok(s) => s,
                Err(errors) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    return ExitCode::from(2);
                }
            };
            match crate::route_tests::run(&snap, &cases) {
                Ok(report) => {
                    out(&report.text);
                    if report.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(err) => {
                    eprintln!("{err}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Plan {
            config,
            from,
            admin_token,
            etcd,
            prefix,
            node,
        } => {
            if etcd.is_empty() && node.is_none() {
                plan_command(&config, from.as_deref(), admin_token)
            } else {
                plan_etcd(&config, &etcd::Target::new(etcd, prefix, node))
            }
        }
        Command::Config { action } => etcd::run(action),
        Command::Schema => {
            out(&crate::config::schema::text());
            ExitCode::SUCCESS
        }
        Command::Version => {
            let text = format!(
                "portico {}\n\
                 protocols: http1 h2c h2 grpc grpc-web tcp tls tls_passthrough udp upgrades \
                 websocket(h1 rfc8441) sse proxy_protocol(v1 v2)\n\
                 tls: rustls, ring provider, TLS 1.2 and 1.3, mTLS, ACME (tls-alpn-01 http-01)\n\
                 balance: round_robin least_request random p2c_ewma ring_hash maglev ip_hash \
                 sticky\n\
                 resilience: health(active passive grpc) retries circuit_breaker mirror split\n\
                 composition: aggregate (json xml form text) grpc_transcode\n\
                 plugins: {}\n",
                env!("CARGO_PKG_VERSION"),
                crate::plugins::NAMES.join(" ")
            );
            out(&text);
            ExitCode::SUCCESS
        }
    }
}

/// `portico plan`.
fn plan_command(
    config: &std::path::Path,
    from: Option<&std::path::Path>,
    token: Option<String>,
) -> ExitCode {
    let print_errors = |errors: Vec<crate::config::Diagnostic>| {
        for e in errors {
            eprintln!("{e}");
        }
    };
    let new = match compile(config) {
        Ok(snap) => snap,
        Err(errors) => {
            print_errors(errors);
            return ExitCode::from(2);
        }
    };
    let redacted = |snap: &runtime::Snapshot| crate::admin::write::redacted(&snap.spec);
    let new_value = match redacted(&new) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (old_value, from_label) = match from {
        Some(old_path) => match compile(old_path) {
            Ok(old) => match redacted(&old) {
                Ok(v) => (v, format!("{} ({})", old_path.display(), old.hash)),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            },
            Err(errors) => {
                eprintln!(
                    "{}: the config to compare with is invalid:",
                    old_path.display()
                );
                print_errors(errors);
                return ExitCode::FAILURE;
            }
        },
        None => {
            let Some((addr, _)) = &new.admin else {
                eprintln!(
                    "{} has no admin.listen to ask the running portico at; pass --from OLD",
                    config.display()
                );
                return ExitCode::FAILURE;
            };
            let token = token.or_else(|| std::env::var("PORTICO_ADMIN_TOKEN").ok());
            match plan::running_config(&addr.to_string(), token.as_deref()) {
                Ok((value, hash)) => (value, format!("running at {addr} ({hash})")),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let changes = plan::diff(&old_value, &new_value);
    let to = format!("{} ({})", config.display(), new.hash);
    out(&plan::render(&from_label, &to, &changes));
    ExitCode::SUCCESS
}

fn compile(path: &std::path::Path) -> Result<runtime::Snapshot, Vec<crate::config::Diagnostic>> {
    with_env(|env| runtime::load(path, env))
}

/// Runs `work` with a compile environment of its own (no process to share state with).
fn with_env<T>(work: impl FnOnce(Env<'_>) -> T) -> T {
    let registry = Registry::default();
    let metrics = Metrics::new();
    let acme = crate::tls::acme::Store::default();
    let states = crate::plugins::state::PluginStates::default();
    work(Env {
        registry: &registry,
        metrics: &metrics,
        acme: &acme,
        states: &states,
    })
}

/// `portico plan --etcd ...`: the shared config etcd holds against a new one.
fn plan_etcd(config: &std::path::Path, target: &etcd::Target) -> ExitCode {
    let ((old, from), (new, to)) = match etcd::plan_sides(config, target) {
        Ok(sides) => sides,
        Err((code, message)) => {
            eprintln!("{message}");
            return ExitCode::from(code);
        }
    };
    let (old_value, new_value) = match (
        crate::admin::write::redacted(&old.spec),
        crate::admin::write::redacted(&new.spec),
    ) {
        (Ok(old), Ok(new)) => (old, new),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let changes = plan::diff(&old_value, &new_value);
    out(&plan::render(&from, &to, &changes));
    ExitCode::SUCCESS
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Writes `text` to standard output; a reader that went away (`portico version | head -1`)
/// is not an error.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}
