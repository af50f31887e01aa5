//! `wasaga:workflow/context`: clock, randomness and log, journaled so replay sees the values
//! the first execution saw.

use crate::bindings::wasaga::workflow::context::Host;
use crate::store::RunState;
use wasaga_core::clock::now_ms;
use wasaga_core::event::Event;

impl Host for RunState {
    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        if let Some(replayed) = replayed {
            return match replayed.first {
                Event::Clock { ms, .. } => Ok(ms),
                other => Err(run.diverged(call, &other, "a clock read".to_owned())),
            };
        }
        run.check_journal_room(1)?;
        let ms = now_ms();
        run.log.buffer(Event::Clock { call, ms });
        Ok(ms)
    }

    async fn random_u64(&mut self) -> wasmtime::Result<u64> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        if let Some(replayed) = replayed {
            return match replayed.first {
                Event::Random { value, .. } => Ok(value),
                other => Err(run.diverged(call, &other, "a random number".to_owned())),
            };
        }
        run.check_journal_room(1)?;
        let value = rand::random::<u64>();
        run.log.buffer(Event::Random { call, value });
        Ok(value)
    }

    async fn log(&mut self, message: String) -> wasmtime::Result<()> {
        let run = &mut self.run;
        let (call, replayed) = run.begin_call()?;
        if let Some(replayed) = replayed {
            return match replayed.first {
                Event::Log {
                    message: journaled, ..
                } if journaled == message => Ok(()),
                other => Err(run.diverged(call, &other, format!("log {message:?}"))),
            };
        }
        let max = run.host.limits.payload_bytes_max;
        if message.len() > max {
            return Err(run.limit(format!(
                "log message of {} bytes exceeds payload_bytes_max = {max}",
                message.len()
            )));
        }
        run.check_journal_room(1)?;
        run.log.buffer(Event::Log {
            call: Some(call),
            message,
        });
        Ok(())
    }
}
