//! Watching bulk work from a client: task lists, waits that answer as each
//! task settles, and the task event stream.

use std::time::Duration;

use flotilla_protocol::TaskId;
use flotilla_protocol::client::{ClientCall, ClientReply};
use flotilla_protocol::watch::{Settled, TaskEventFilter, TaskEventView, TaskList, TaskQuery};

use crate::{Client, ClientError, DEFAULT_CALL_TIMEOUT, WAIT_MARGIN, capped, unexpected};

impl Client {
    /// The caller's tasks that `query` asks for, newest first.
    pub fn list_tasks(&self, query: TaskQuery) -> Result<TaskList, ClientError> {
        match self.call(&ClientCall::ListTasks(query), DEFAULT_CALL_TIMEOUT)? {
            ClientReply::TaskList(list) => Ok(list),
            other => Err(unexpected(&other)),
        }
    }

    /// Which of `ids` are settled (final, or unknown to the caller), with
    /// their outcomes; with `wait`, blocks until at least one is or the
    /// wait passes.
    pub fn settled(&self, ids: &[TaskId], wait: Option<Duration>) -> Result<Settled, ClientError> {
        let wait = wait.map(capped);
        let call = ClientCall::Settled {
            ids: ids.to_vec(),
            wait_ms: wait.map(|w| w.as_millis() as u64),
        };
        let timeout = wait.map_or(DEFAULT_CALL_TIMEOUT, |w| w + WAIT_MARGIN);
        match self.call(&call, timeout)? {
            ClientReply::Settled(settled) => Ok(settled),
            other => Err(unexpected(&other)),
        }
    }

    /// Events of the caller's tasks after sequence number `after` that
    /// pass `filter`, oldest first, and the sequence number to ask after
    /// next; with `wait`, blocks until there is one or the wait passes.
    pub fn task_events(
        &self,
        after: u64,
        wait: Option<Duration>,
        filter: &TaskEventFilter,
    ) -> Result<(Vec<TaskEventView>, u64), ClientError> {
        let wait = wait.map(capped);
        let call = ClientCall::TaskEvents {
            after,
            wait_ms: wait.map(|w| w.as_millis() as u64),
            filter: filter.clone(),
        };
        let limit = wait.unwrap_or_default() + DEFAULT_CALL_TIMEOUT;
        match self.call(&call, limit)? {
            ClientReply::TaskEvents { events, last } => Ok((events, last)),
            other => Err(unexpected(&other)),
        }
    }
}
