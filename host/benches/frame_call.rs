//! Per-frame cost of host + guest: one `on-frame` call of the built-in echo plugin on a 16-byte
//! frame (lowering the frame into guest memory, the guest building `Echo: ` + frame, lifting the
//! reply back), next to the same work done natively in the same run.
//!
//! The Python and JavaScript echo examples are measured too when they have been built
//! (`examples/python-echo/build.sh`, `examples/js-echo/build.sh`).
//!
//! Run: `cargo bench --bench frame_call` (results in BENCHMARKS.md).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pier::Framing;
use pier::Listener;
use pier::internals::PluginInstance;
use pier::{Runtime, RuntimeConfig};

fn native_echo(frame: &[u8]) -> Option<Vec<u8>> {
    let mut reply = Vec::with_capacity(6 + frame.len());
    reply.extend_from_slice(b"Echo: ");
    reply.extend_from_slice(frame);
    Some(reply)
}

fn frame_call(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig {
        // The cache spares recompiling the Python and JavaScript components (~20 s each).
        cache_dir: pier::internals::ArtifactCache::default_dir(),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let echo = pier::builtin::find("echo").expect("echo").wasm.to_vec();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut plugins = vec![("rust", echo)];
    for (lang, dir) in [("python", "python-echo"), ("js", "js-echo")] {
        match std::fs::read(examples.join(dir).join("echo.wasm")) {
            Ok(bytes) => plugins.push((lang, bytes)),
            Err(_) => eprintln!("examples/{dir}/echo.wasm not built: skipping {lang}"),
        }
    }
    let frame = [b'x'; 16];
    // Guest calls are async (they run on a fiber so a long call can yield its worker); the
    // loop runs inside one `block_on` so the figure is the call, not the executor.
    let executor = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("echo 16 B frame");
    group.measurement_time(Duration::from_secs(5));
    for (lang, wasm) in plugins {
        let plugin = runtime
            .load_plugin(lang, &wasm)
            .expect("load the echo plugin");
        let shared = Listener::builder("bench", plugin.clone())
            .framing(Framing::Raw)
            .build();
        let mut instance = PluginInstance::fixed(runtime.clone(), plugin, shared.ctx.clone());
        group.bench_function(format!("pier wasm on-frame ({lang})"), |b| {
            b.iter_custom(|iters| {
                executor.block_on(async {
                    let started = std::time::Instant::now();
                    for _ in 0..iters {
                        black_box(
                            instance
                                .on_frame(1, black_box(&frame))
                                .await
                                .expect("no fault"),
                        );
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.bench_function("native baseline", |b| {
        b.iter(|| native_echo(black_box(&frame)))
    });
    group.finish();
}

criterion_group!(benches, frame_call);
criterion_main!(benches);
