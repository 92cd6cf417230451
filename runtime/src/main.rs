//! The `ferry` command. Parses arguments and calls the library: all logic
//! lives in `ferry::run` and friends so tests can drive it without signals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ferry::config::{ConfigErrors, PipelineConfig, expand_paths, load_paths};
use ferry::offsets::OffsetStore;
use ferry::redact::redact;
use ferry::registry::Registry;
use ferry::{Reload, RunOptions, delivery_guarantee, lock_data_dir};
use tokio::sync::mpsc;

// Records are parsed on one thread and freed on another, thousands per
// chunk: glibc's malloc spent a quarter of the CPU of file → PostgreSQL in
// its locks and consolidation; mimalloc's per-thread free lists do not.
// Built without transparent huge pages (`no_thp`), which had tripled the
// resident memory.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Moves records from sources to sinks, with no loss and no duplicates."
)]
struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `ferry=debug`.
    #[arg(long, global = true, env = "FERRY_LOG", default_value = "info")]
    log: String,
    /// `text` for people, `json` (one object per line) for log shippers.
    #[arg(
        long,
        global = true,
        env = "FERRY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run pipelines until stopped (Ctrl-C or SIGTERM: finish the batch, commit, exit 0).
    Run(RunArgs),
    /// Check pipeline files without running them; print every error, and each pipeline's guarantee.
    Validate(ValidateArgs),
    /// Pause a pipeline of the running ferry: what it read is written and
    /// committed, then nothing is read until it is resumed (also across
    /// restarts of ferry).
    Pause(SteerArgs),
    /// Resume a paused pipeline from its committed positions.
    Resume(SteerArgs),
    /// Restart a pipeline from its committed positions (a failed one too).
    Restart(SteerArgs),
    /// Every pipeline of the running ferry: state, counters, rate, last error.
    Status(StatusArgs),
    /// Print the JSON Schema of pipeline files, for editors:
    /// `ferry schema > pipeline.schema.json` (see the README).
    Schema,
    /// Print a shell completion script: `ferry completions bash > /etc/bash_completion.d/ferry`.
    Completions { shell: clap_complete::Shell },
    /// Show or reset committed offsets.
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Where offsets, default dead-letter files and the lock are kept.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Exit once every source has nothing more to read (batch jobs, benchmarks).
    #[arg(long)]
    once: bool,
    /// How often to print one progress line per pipeline.
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    progress_interval: Duration,
    /// After SIGTERM or Ctrl-C, how long pipelines have to commit what
    /// they wrote and stop; past it ferry exits 1, naming those that did
    /// not (committed positions are safe either way).
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    shutdown_timeout: Duration,
    /// Do not watch the pipeline files (SIGHUP still reloads them); an
    /// invalid file then stops the start, and ferry exits once every
    /// pipeline has ended.
    #[arg(long)]
    no_watch: bool,
    /// Where the admin API listens, or `off`. Beyond loopback only with a token.
    #[arg(long, env = "FERRY_API", default_value = ferry::api::client::DEFAULT_ADDR)]
    api: String,
    #[command(flatten)]
    token: TokenArgs,
    /// Pipeline files, or folders of them (*.yaml, *.yml).
    #[arg(default_value = "configs")]
    paths: Vec<PathBuf>,
}

/// The admin API's token: a file's content, or FERRY_API_TOKEN (never an
/// argument, which every user of the machine can read in `ps`).
#[derive(Args)]
struct TokenArgs {
    /// A file holding the admin API's token (else FERRY_API_TOKEN, if set).
    #[arg(long, env = "FERRY_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
}

impl TokenArgs {
    fn token(&self) -> anyhow::Result<Option<String>> {
        let token = match &self.api_token_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--api-token-file {}", file.display()))?;
                Some(text.trim().to_string())
            }
            None => std::env::var("FERRY_API_TOKEN").ok(),
        };
        match token {
            Some(t) if t.is_empty() => anyhow::bail!("the admin API's token is empty"),
            // What an HTTP header carries as it is, and a user can type.
            Some(t) if !t.chars().all(|c| c.is_ascii_graphic()) => {
                anyhow::bail!(
                    "the admin API's token must be one word of visible ASCII characters (no spaces, no accents)"
                )
            }
            other => Ok(other),
        }
    }
}

/// How to reach a running ferry.
#[derive(Args)]
struct ApiArgs {
    /// The data folder of the running ferry (its API address is kept there).
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// The running ferry's API address, instead of the one its data folder notes.
    #[arg(long = "api", value_name = "ADDR")]
    addr: Option<String>,
    #[command(flatten)]
    token: TokenArgs,
}

impl ApiArgs {
    fn target(&self) -> anyhow::Result<ferry::api::client::Target> {
        Ok(ferry::api::client::Target {
            addr: match &self.addr {
                Some(addr) => addr.clone(),
                None => ferry::api::client::addr_for(&self.data_dir),
            },
            token: self.token.token()?,
        })
    }
}

#[derive(Args)]
struct SteerArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The pipeline's name.
    #[arg(value_parser = pipeline_name)]
    pipeline: String,
}

/// A pipeline's name as pipeline files allow it: it goes into a request's
/// path as it is.
fn pipeline_name(s: &str) -> Result<String, String> {
    if ferry::config::is_pipeline_name(s) {
        Ok(s.to_string())
    } else {
        Err("a pipeline's name has letters, digits, '-', '_' and '.' only".to_string())
    }
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Refresh every second, in place, until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

#[derive(Args)]
struct ValidateArgs {
    /// Also connect to every source and sink and check that what they
    /// need exists (server answers, table present). Changes nothing.
    #[arg(long)]
    check_connections: bool,
    /// Pipeline files, or folders of them (*.yaml, *.yml).
    #[arg(default_value = "configs")]
    paths: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum OffsetsCommand {
    /// List the committed positions of every pipeline.
    List {
        #[arg(long, env = "FERRY_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
    /// Make a pipeline start again from the beginning of its source at its next start.
    Reset(SteerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(ferry::redact::RedactingStderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    // A panic's message may quote a value: masked like every other line.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{}", ferry::redact::redact(&info.to_string()));
    }));
    match real_main(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", redact(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

fn real_main(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run(args),
        Command::Validate(args) => validate(args, &Registry::builtin()),
        Command::Pause(a) => steer(&a, "pause"),
        Command::Resume(a) => steer(&a, "resume"),
        Command::Restart(a) => steer(&a, "restart"),
        Command::Status(args) => status(&args),
        Command::Schema => {
            let schema = ferry::schema::pipeline_schema(&Registry::builtin());
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Offsets {
            command: OffsetsCommand::List { data_dir },
        } => list_offsets(&data_dir),
        Command::Offsets {
            command: OffsetsCommand::Reset(args),
        } => reset_offsets(&args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let registry = Arc::new(Registry::builtin());
    // Watching, the files are read by the run itself (its first reload): an
    // invalid one is reported and skipped, and picked up once it is fixed.
    let watch = !args.once && !args.no_watch;
    let pipelines = if watch {
        match expand_paths(&args.paths) {
            Ok(files) if files.is_empty() => return Ok(no_pipelines_code(&args.paths)),
            Ok(_) => Vec::new(),
            Err(errors) => return Ok(print_config_errors(&errors)),
        }
    } else {
        match load(&args.paths, &registry) {
            Ok(p) if p.is_empty() => return Ok(no_pipelines_code(&args.paths)),
            Ok(p) => p,
            Err(code) => return Ok(code),
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let outcomes = runtime.block_on(async {
        let (reloads, requests) = mpsc::channel(1);
        let _watcher = if watch {
            let watcher = ferry::reload::watch::watch(&args.paths, reloads.clone())
                .context("watching the pipeline files")?;
            // The first reading of the files.
            let _ = reloads.try_send(());
            Some(watcher)
        } else {
            None
        };
        if args.once {
            ignore_sighup();
        }
        let reload = (!args.once).then(|| {
            reload_on_sighup(reloads);
            Reload {
                paths: args.paths.clone(),
                registry: registry.clone(),
                requests,
                stay: watch,
            }
        });
        let api = bind_api(&args).await?;
        // Said only while it is true: a stale address would send the
        // control commands to whatever takes the port next.
        let noted = api
            .is_some()
            .then(|| ferry::api::client::addr_file(&args.data_dir));
        let options = RunOptions {
            api,
            data_dir: args.data_dir,
            once: args.once,
            progress_interval: args.progress_interval,
            shutdown_timeout: args.shutdown_timeout,
            reload,
        };
        let outcomes = ferry::run(pipelines, options, shutdown_signal()).await;
        if let Some(file) = noted {
            let _ = std::fs::remove_file(file);
        }
        anyhow::Ok(outcomes)
    });
    // Everything is committed and closed: the process ends without tearing
    // the runtime down. A teardown drops the tasks left (a driver's pool
    // worker among them) on one thread while another may still poll one
    // that needs it — the MongoDB driver panics then (about 1 stop in 30
    // under SIGTERM). A pipeline abandoned at the shutdown timeout may also
    // leave a blocking read behind, which nothing should wait for.
    std::mem::forget(runtime);
    let failed: Vec<_> = outcomes??
        .into_iter()
        .filter(|o| o.error.is_some())
        .collect();
    for o in &failed {
        let line = format!(
            "error: pipeline {} failed: {}",
            o.name,
            o.error.as_deref().unwrap_or_default()
        );
        eprintln!("{}", redact(&line));
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn validate(args: ValidateArgs, registry: &Registry) -> anyhow::Result<ExitCode> {
    let pipelines = match load(&args.paths, registry) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if pipelines.is_empty() {
        eprintln!("error: {}", no_pipelines(&args.paths));
        return Ok(ExitCode::from(2));
    }
    for p in &pipelines {
        println!(
            "{}",
            redact(&format!("ok   {}: {}", p.file.display(), p.name))
        );
        let route = format!("{} → {}", p.source.describe(), p.sink.describe());
        println!("     {}", redact(&route));
        println!("     {}", delivery_guarantee(p));
    }
    println!("{} pipeline(s) valid", pipelines.len());
    if !args.check_connections {
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let problems = runtime.block_on(ferry::check_connections(&pipelines));
    for p in &problems {
        eprintln!("error: {}", redact(p));
    }
    if problems.is_empty() {
        println!("connections ok");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} connection problem(s)", problems.len());
        Ok(ExitCode::from(1))
    }
}

fn list_offsets(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let entries = OffsetStore::new(data_dir).list()?;
    if entries.is_empty() {
        println!("no offsets stored in {}", data_dir.display());
    }
    for e in entries {
        let kept = if e.kept_by_sink {
            " (kept by the sink; this is a copy)"
        } else {
            ""
        };
        let reset = if e.reset {
            " — chosen by an operator (a reset or a PUT): its next start begins from these"
        } else {
            ""
        };
        println!("{}: updated {}{kept}{reset}", e.pipeline, e.updated);
        for p in e.positions.iter() {
            println!("  {}  {}", p.partition.key, p.describe());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn reset_offsets(args: &SteerArgs) -> anyhow::Result<ExitCode> {
    let (data_dir, pipeline) = (&args.api.data_dir, &args.pipeline);
    // While a ferry runs on this folder, it does the reset (pause, reset,
    // resume): it would overwrite one made beside it.
    let _lock = match lock_data_dir(data_dir) {
        Ok(lock) => lock,
        Err(ferry::RunError::Locked(_)) => {
            let path = format!("/pipelines/{pipeline}/offsets");
            return call_api(&args.api, "DELETE", &path);
        }
        Err(e) => return Err(e.into()),
    };
    if OffsetStore::new(data_dir).reset(pipeline)? {
        println!("{pipeline}: offsets reset; its next start reads its source from the beginning");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: no offsets stored for pipeline {pipeline:?} in {}",
            data_dir.display()
        );
        Ok(ExitCode::from(1))
    }
}

/// `ferry pause|resume|restart NAME`.
fn steer(args: &SteerArgs, what: &str) -> anyhow::Result<ExitCode> {
    call_api(
        &args.api,
        "POST",
        &format!("/pipelines/{}/{what}", args.pipeline),
    )
}

/// `ferry status`: one line per pipeline; with `--watch`, again every
/// second, in place.
fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut target = args.api.target()?;
    loop {
        // Read again each time: a ferry started again may listen elsewhere.
        if args.api.addr.is_none() {
            target.addr = ferry::api::client::addr_for(&args.api.data_dir);
        }
        let table = runtime
            .block_on(ferry::api::client::request(&target, "GET", "/pipelines"))
            .and_then(|(code, body)| match code {
                200 => serde_json::from_str::<Vec<serde_json::Value>>(&body)
                    .map(|p| ferry::api::client::status_table(&p))
                    .map_err(|e| format!("ferry's API answered {e}")),
                _ => Err(api_error(&body)),
            });
        if !args.watch {
            return match table {
                Ok(table) => {
                    print!("{table}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            };
        }
        // Home, clear: the table stays in place like `top`.
        let shown = table.unwrap_or_else(|e| format!("error: {e}\n"));
        print!("\x1b[H\x1b[2J{shown}");
        use std::io::Write;
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One request to the running ferry's API; prints its answer.
fn call_api(api: &ApiArgs, method: &str, path: &str) -> anyhow::Result<ExitCode> {
    let target = api.target()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (code, body) = runtime
        .block_on(ferry::api::client::request(&target, method, path))
        .map_err(|e| anyhow::anyhow!(e))?;
    if (200..300).contains(&code) {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        println!(
            "{}: {}",
            v["pipeline"].as_str().unwrap_or("?"),
            v["ok"].as_str().unwrap_or(&body)
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: {}", api_error(&body));
        Ok(ExitCode::from(1))
    }
}

fn api_error(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| match body.trim() {
            "" => "the API answered with an error and no message".to_string(),
            text => text.to_string(),
        })
}

/// No pipeline file in PATHS: said, exit 2 (as for invalid files).
fn no_pipelines_code(paths: &[PathBuf]) -> ExitCode {
    eprintln!("error: {}", no_pipelines(paths));
    ExitCode::from(2)
}

fn no_pipelines(paths: &[PathBuf]) -> String {
    format!(
        "no pipeline files (*.yaml, *.yml) in {paths:?}; folders are not searched recursively \
         (try `ferry run configs/examples`)"
    )
}

/// A duration for a command-line option: more than zero, at most a day.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match ferry_api::duration::parse(text)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// Loads every pipeline file under `paths`; on errors prints them all and
/// returns the exit code.
fn load(paths: &[PathBuf], registry: &Registry) -> Result<Vec<PipelineConfig>, ExitCode> {
    load_paths(paths, registry).map_err(|errors| print_config_errors(&errors))
}

fn print_config_errors(errors: &ConfigErrors) -> ExitCode {
    for e in &errors.0 {
        eprintln!("error: {}", redact(&e.to_string()));
    }
    eprintln!("{} error(s) in pipeline files", errors.0.len());
    ExitCode::from(2)
}

/// Binds the admin API as `--api` says (`off`: none) and notes its
/// address in the data folder for the control commands.
async fn bind_api(args: &RunArgs) -> anyhow::Result<Option<ferry::ApiServer>> {
    let token = args.token.token()?;
    Ok(match args.api.as_str() {
        "off" => None,
        addr => {
            let addr = addr.parse().with_context(|| {
                format!("--api {addr}: an address such as 127.0.0.1:8083, or off")
            })?;
            let listener = match ferry::api::bind(addr, token.is_some()).await {
                // Another ferry on this machine has the default port:
                // this one takes a free port (the control commands find
                // it in the data folder).
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && args.api == ferry::api::client::DEFAULT_ADDR =>
                {
                    tracing::warn!(
                        "the admin API's port {addr} is in use: listening on a free port instead"
                    );
                    let free = "127.0.0.1:0".parse().expect("an address");
                    ferry::api::bind(free, token.is_some()).await
                }
                other => other,
            }
            .with_context(|| format!("the admin API on {addr}"))?;
            let bound = listener.local_addr()?;
            std::fs::create_dir_all(&args.data_dir)?;
            std::fs::write(
                ferry::api::client::addr_file(&args.data_dir),
                format!("{bound}\n"),
            )?;
            let guarded = if token.is_some() {
                " (with a token)"
            } else {
                ""
            };
            tracing::info!("admin API on http://{bound}{guarded}");
            Some(ferry::ApiServer { listener, token })
        }
    })
}

/// With `--once` there is nothing to reload: a SIGHUP is said and ignored
/// (its default would end the process without a drain).
fn ignore_sighup() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP ignored: --once does not reload");
        }
    });
}

/// Each SIGHUP asks for a reload of the pipeline files.
fn reload_on_sighup(reloads: mpsc::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the pipeline files");
            // A reload already asked for reads the files anew: one is enough.
            if let Err(mpsc::error::TrySendError::Closed(())) = reloads.try_send(()) {
                return;
            }
        }
    });
}

/// Resolves on the first SIGINT or SIGTERM. A second one exits at once: the
/// committed positions are safe whatever is in flight.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("second signal: exiting now (committed positions are safe)");
        std::process::exit(130);
    });
}
