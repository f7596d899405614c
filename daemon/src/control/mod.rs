//! The control socket, CLI ⇄ daemon: binding it ([`listener`]), serving connections ([`serve`]), the API
//! behind it (`api`), and the CLI's side ([`client`], over the small HTTP/1.1 client in `http`).

pub(crate) mod api;
pub mod client;
pub(crate) mod http;
pub mod listener;
pub mod serve;
