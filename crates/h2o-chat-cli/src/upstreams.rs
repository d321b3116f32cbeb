//! The gateway's upstreams from the command line (`--upstream`, `--upstreams FILE`), and
//! `h2o-chat upstreams`: each upstream's kind, health and models.

use std::sync::Arc;
use std::time::Duration;

use h2o_chat_gateway::{GatewayTimeouts, Pool, UpstreamKind, UpstreamSpec};
use h2o_chat_server::{ModelRegistry, ServedModel};

use crate::cli::{self, UpstreamArgs};
use crate::cli_error::CliError;

/// The upstreams named on the command line and in the file, in that order.
pub fn specs(args: &UpstreamArgs) -> Result<Vec<UpstreamSpec>, CliError> {
    let default = match args.upstream_kind {
        cli::UpstreamKind::H2o => UpstreamKind::H2o,
        cli::UpstreamKind::Tgi => UpstreamKind::Tgi,
        cli::UpstreamKind::Openai => UpstreamKind::OpenAi,
    };
    let mut specs = args
        .upstream
        .iter()
        .map(|text| {
            UpstreamSpec::parse(text, default)
                .map_err(|e| CliError::Usage(format!("--upstream {text}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.upstreams {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        specs.extend(
            UpstreamSpec::parse_file(&text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?,
        );
    }
    Ok(specs)
}

fn seconds(flag: &str, secs: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| CliError::Usage(format!("{flag} takes a positive number of seconds")))
}

/// The pool for the named upstreams.
pub fn pool(args: &UpstreamArgs) -> Result<Option<Arc<Pool>>, CliError> {
    let specs = specs(args)?;
    if specs.is_empty() {
        return Ok(None);
    }
    let timeouts = GatewayTimeouts {
        check_interval: seconds("--health-interval", args.health_interval)?,
        first_token: seconds("--first-token-timeout", args.first_token_timeout)?,
        ..GatewayTimeouts::default()
    };
    Pool::with_timeouts(specs, timeouts)
        .map(Some)
        .map_err(|e| CliError::Usage(format!("upstreams: {e}")))
}

/// The served ids of a gateway in front of `pool`: the H2o ids and the local model's, each
/// relayed to the upstreams.
pub fn registry(pool: &Arc<Pool>) -> ModelRegistry {
    let models = h2o_chat_gateway::served_models(pool)
        .into_iter()
        .map(|model| ServedModel::new(model.id, model.aliases, model.engine))
        .collect();
    ModelRegistry::new(models)
}

/// The models an upstream lists (`/v1/models`, or TGI's `/info`), when it says.
async fn models_of(http: &reqwest::Client, spec: &UpstreamSpec) -> String {
    let base = spec.url.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    let get = |path: &str| {
        let mut request = http
            .get(format!("{base}{path}"))
            .timeout(Duration::from_secs(5));
        if let Some(key) = &spec.api_key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    if spec.kind == UpstreamKind::Tgi
        && let Ok(response) = get("/info").await
        && let Ok(info) = response.json::<serde_json::Value>().await
        && let Some(id) = info.get("model_id").and_then(|v| v.as_str())
    {
        return id.to_string();
    }
    if let Ok(response) = get("/v1/models").await
        && response.status().is_success()
        && let Ok(list) = response.json::<serde_json::Value>().await
        && let Some(data) = list.get("data").and_then(|d| d.as_array())
    {
        let ids: Vec<&str> = data.iter().filter_map(|m| m.get("id")?.as_str()).collect();
        return ids.join(", ");
    }
    "(not listed)".into()
}

/// `h2o-chat upstreams`.
pub async fn run(args: &UpstreamArgs) -> Result<(), CliError> {
    let Some(pool) = pool(args)? else {
        return Err(CliError::Usage(
            "no upstream: give --upstream [KIND=]URL or --upstreams FILE".into(),
        ));
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| CliError::Other(e.to_string()))?;
    pool.check_all(&http).await;
    println!("{:<7} {:<8} {:<40} models", "kind", "health", "url");
    let mut healthy = 0;
    for upstream in pool.upstreams() {
        let ok = upstream.is_healthy();
        healthy += usize::from(ok);
        let models = if ok {
            models_of(&http, &upstream.spec).await
        } else {
            "-".into()
        };
        println!(
            "{:<7} {:<8} {:<40} {models}",
            upstream.spec.kind.name(),
            if ok { "healthy" } else { "down" },
            h2o_chat_gateway::redact::credentials(&upstream.spec.url)
        );
    }
    if healthy == 0 {
        return Err(CliError::Other("no upstream is healthy".into()));
    }
    Ok(())
}
