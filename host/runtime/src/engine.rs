//! The wasmtime engine: configuration (pooling allocator, epoch deadlines), the linker with a
//! deny-everything WASI, and loading of workflow components with an on-disk cache of
//! precompiled code keyed by content hash.

use crate::bindings::WorkflowPre;
use crate::store::RunState;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasaga_core::limits::Limits;
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::p2::DynPollable;

/// Bytes of a pooled instance's memory (and tables) kept resident between instances.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// How often the epoch advances; run deadlines are counted in these ticks.
pub const EPOCH_TICK_MS: u64 = 5;

/// Why a module cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("not a WebAssembly file (it does not start with the \\0asm magic)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build the workflow with `cargo build --target wasm32-wasip2`"
    )]
    NotComponent,
    #[error("invalid WebAssembly component: {0}")]
    Invalid(String),
    #[error("the component imports {0}, which wasaga does not provide to workflows")]
    UnsupportedImport(String),
    #[error(
        "the component does not export the wasaga workflow world (`run: func(input: string) -> result<string, string>`): {0}"
    )]
    NotAWorkflow(String),
    #[error("module is {size_bytes} bytes, over the {max_bytes}-byte limit")]
    TooLarge { size_bytes: usize, max_bytes: usize },
}

/// The compiled, linked form of a module, ready to instantiate.
pub type Loaded = Arc<WorkflowPre<RunState>>;

/// The engine and everything compiled by it.
pub struct WorkflowEngine {
    engine: Engine,
    linker: Linker<RunState>,
    cache_dir: PathBuf,
    loaded: Mutex<HashMap<String, Loaded>>,
    /// Modules being compiled right now.
    compiling: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for WorkflowEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowEngine")
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// What a module declares it uses, from its `wasaga:manifest` custom section (written by
/// guest-sdk's `export_workflow!`). A deploy checks it against the workflow's grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Manifest {
    pub participants: Vec<String>,
    pub lock_prefixes: Vec<String>,
}

/// The custom section a module's manifest lives in.
pub const MANIFEST_SECTION: &str = "wasaga:manifest";

/// Reads the manifest of a component (from any of its core modules), if it has one.
pub fn manifest(bytes: &[u8]) -> Result<Option<Manifest>, ModuleError> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| ModuleError::Invalid(e.to_string()))?;
        if let wasmparser::Payload::CustomSection(section) = payload
            && section.name() == MANIFEST_SECTION
        {
            return parse_manifest(section.data()).map(Some);
        }
    }
    Ok(None)
}

/// The manifest's text: a `wasaga-manifest 1` line, then `participant <name>` and
/// `lock <prefix>` lines.
fn parse_manifest(data: &[u8]) -> Result<Manifest, ModuleError> {
    let bad = |why: String| ModuleError::Invalid(format!("its {MANIFEST_SECTION} section {why}"));
    let text = std::str::from_utf8(data).map_err(|_| bad("is not UTF-8".to_owned()))?;
    let mut lines = text.lines();
    if lines.next() != Some("wasaga-manifest 1") {
        return Err(bad(
            "is not version 1; rebuild the module with this host's guest-sdk".to_owned(),
        ));
    }
    let mut manifest = Manifest::default();
    for line in lines.filter(|l| !l.is_empty()) {
        match line.split_once(' ') {
            Some(("participant", name)) => manifest.participants.push(name.to_owned()),
            Some(("lock", prefix)) => manifest.lock_prefixes.push(prefix.to_owned()),
            _ => return Err(bad(format!("has an unknown line {line:?}"))),
        }
    }
    Ok(manifest)
}

/// A module gets no real sleep: one inside a host call would outlast the run's deadline (which
/// counts only while wasm code runs) and hold the run as long as the module asks. WASI's
/// clocks are frozen for the module anyway, so a subscription to them is ready at once:
/// `std::thread::sleep` returns immediately, and a module that waits on it in a loop spins
/// until its deadline ends it. Workflows wait through the journal instead.
fn no_sleeping(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    fn ready_now(
        mut store: wasmtime::StoreContextMut<'_, RunState>,
    ) -> wasmtime::Result<(Resource<DynPollable>,)> {
        let table = &mut store.data_mut().table;
        let ready = table.push(ReadyNow)?;
        Ok((wasmtime_wasi::p2::subscribe(table, ready)?,))
    }
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |store, (_,): (u64,)| ready_now(store))?;
    clock.func_wrap("subscribe-instant", |store, (_,): (u64,)| ready_now(store))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The monotonic clock interface as `wasmtime_wasi` 48 provides it (older 0.2 imports resolve
/// to it by semver).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A pollable that is always ready.
struct ReadyNow;

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for ReadyNow {
    async fn ready(&mut self) {}
}

/// The largest module accepted.
pub const MODULE_BYTES_MAX: usize = 64 << 20;

/// The content hash modules are stored and pinned by.
pub fn module_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

impl WorkflowEngine {
    /// Builds the engine and linker; starts the epoch ticker thread.
    pub fn new(limits: &Limits, cache_dir: &Path) -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let instances = limits.concurrent_runs_max.max(1);
        pool.total_component_instances(instances)
            .total_core_instances(instances * 4)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_core_instances_per_component(16)
            .max_memory_size(limits.memory_bytes_max)
            // Reset a freed slot's memory in place rather than handing it back to the kernel:
            // handing it back (madvise) costs a TLB shootdown across cores, and the next
            // instance then page-faults it in again. With PAGEMAP_SCAN (Linux 6.7+) only the
            // pages the instance dirtied are reset; without it the resident prefix is zeroed,
            // so the bound stays small. Measured with `wasaga bench transfer` (README).
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES.min(limits.memory_bytes_max))
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Guest memory never needs more than the cap: keep reservations small so that
            // hundreds of pooled slots fit comfortably in the address space.
            .memory_reservation(limits.memory_bytes_max as u64)
            .memory_guard_size(64 << 10);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::<RunState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        no_sleeping(&mut linker)?;
        crate::bindings::Workflow::add_to_linker::<RunState, wasmtime::component::HasSelf<RunState>>(
            &mut linker,
            |state| state,
        )?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasaga-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                }
            })
            .map_err(|e| wasmtime::Error::msg(format!("cannot start epoch thread: {e}")))?;
        Ok(WorkflowEngine {
            engine,
            linker,
            cache_dir: cache_dir.to_owned(),
            loaded: Mutex::new(HashMap::new()),
            compiling: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// How many modules are being compiled right now.
    pub fn compiling(&self) -> usize {
        self.compiling.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Checks that `bytes` are a loadable workflow component and returns its hash. Nothing is
    /// stored.
    pub fn validate(&self, bytes: &[u8]) -> Result<String, ModuleError> {
        let hash = module_hash(bytes);
        self.load(&hash, bytes)?;
        Ok(hash)
    }

    /// The loaded module with content hash `hash`, if this engine has loaded it before.
    pub fn cached(&self, hash: &str) -> Option<Loaded> {
        self.loaded
            .lock()
            .expect("module map lock poisoned")
            .get(hash)
            .cloned()
    }

    /// Compiles (or fetches from the caches) and links the module with content hash `hash`.
    pub fn load(&self, hash: &str, bytes: &[u8]) -> Result<Loaded, ModuleError> {
        if let Some(loaded) = self
            .loaded
            .lock()
            .expect("module map lock poisoned")
            .get(hash)
        {
            return Ok(loaded.clone());
        }
        if bytes.len() > MODULE_BYTES_MAX {
            return Err(ModuleError::TooLarge {
                size_bytes: bytes.len(),
                max_bytes: MODULE_BYTES_MAX,
            });
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(ModuleError::NotWasm);
        }
        // Core modules carry version 1 in bytes 4..8; components carry layer 1 in bytes 6..8.
        if bytes[6..8] != [1, 0] {
            return Err(ModuleError::NotComponent);
        }
        assert_eq!(
            module_hash(bytes),
            hash,
            "module bytes do not match their hash"
        );
        let component = self.compile_cached(hash, bytes)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let message = format!("{e:#}");
            match message.split_once("import `") {
                Some((_, rest)) => ModuleError::UnsupportedImport(format!(
                    "`{}",
                    rest.split_once('`')
                        .map_or(rest, |(name, _)| name)
                        .to_owned()
                        + "`"
                )),
                None => ModuleError::UnsupportedImport(message),
            }
        })?;
        let workflow =
            WorkflowPre::new(pre).map_err(|e| ModuleError::NotAWorkflow(format!("{e:#}")))?;
        let loaded = Arc::new(workflow);
        self.loaded
            .lock()
            .expect("module map lock poisoned")
            .insert(hash.to_owned(), loaded.clone());
        Ok(loaded)
    }

    fn compile_cached(&self, hash: &str, bytes: &[u8]) -> Result<Component, ModuleError> {
        let compatibility = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.engine
                .precompile_compatibility_hash()
                .hash(&mut hasher);
            hasher.finish()
        };
        let path = self
            .cache_dir
            .join(format!("{hash}-{compatibility:016x}.cwasm"));
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an engine with the same
            // compatibility hash, under a name that includes the module's content hash; wasmtime
            // still checks the header and refuses incompatible artifacts.
            #[allow(unsafe_code)]
            let cached = unsafe { Component::deserialize_file(&self.engine, &path) };
            if let Ok(component) = cached {
                return Ok(component);
            }
            // A damaged or stale cache entry is not an error: compile again below.
        }
        self.compiling
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let compiled = self.engine.precompile_component(bytes);
        self.compiling
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let compiled = compiled.map_err(|e| ModuleError::Invalid(format!("{e:#}")))?;
        // A cache that cannot be written only costs compile time next start.
        if std::fs::create_dir_all(&self.cache_dir).is_ok() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &compiled).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        // SAFETY: `compiled` was just produced by `precompile_component` of this very engine.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, &compiled) };
        component.map_err(|e| ModuleError::Invalid(format!("{e:#}")))
    }
}
