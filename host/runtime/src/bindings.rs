//! The one `bindgen!` of the host: Rust types and traits generated from `wit/`. Crate-private;
//! conversion into the host's own types happens in `host_api/`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "workflow",
    imports: { default: async | trappable },
    exports: { default: async },
});
