//! The command line: `run`, `validate`, `explain`, `schema`, `version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

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
            let question = match question(&method, &url, &headers) {
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

fn compile(path: &std::path::Path) -> Result<runtime::Snapshot, Vec<crate::config::Diagnostic>> {
    let registry = Registry::default();
    let metrics = Metrics::new();
    let acme = crate::tls::acme::Store::default();
    let states = crate::plugins::state::PluginStates::default();
    runtime::load(
        path,
        Env {
            registry: &registry,
            metrics: &metrics,
            acme: &acme,
            states: &states,
        },
    )
}

fn question<'a>(
    method: &str,
    url: &'a str,
    headers: &[String],
) -> Result<explain::Question<'a>, String> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid method `{method}`"))?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| "invalid header: expected `Name: value`".to_owned())?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name `{}`", name.trim()))?;
        // The value may be a credential: never repeated.
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid value for header `{name}`"))?;
        map.append(name, value);
    }
    Ok(explain::Question {
        method,
        url,
        headers: map,
        client: std::net::IpAddr::from([127, 0, 0, 1]),
    })
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
