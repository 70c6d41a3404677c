//! The VMM console-connect token (PROTOCOLS.md §5): mint it as System Center VMM does, check it
//! as the RD Gateway FedAuth plug-in does, and write the .rdp file that carries it.
//!
//! The token is `Host=<host>&Port=<port>&ExpiresOn=<unix s>&Signature=1|SHA256|<THUMBPRINT>|<sig>`
//! where `<sig>` is the percent-encoded base64 RSA signature of the part before `&Signature=`.
//!
//! - [`thumbprint`]: [`Thumbprint`], parsing that names invisible pasted characters (U+200E).
//! - `codec`: [`mint`], [`parse`], [`redact`], percent-encoding; pure.
//! - `identity`: [`SigningIdentity`] (our key + cert) and [`TrustedCert`]; the only file I/O
//!   lives in small helpers at the end of that file (`load`, `write`).
//! - `verify`: [`Verifier`], the 8 verification steps with their HRESULTs.
//! - `rdp`: [`rdp_file`].
//!
//! Nothing here reads the clock: every function that needs the time takes `now_unix`.
//! Tokens are bearer credentials: log them only through [`redact`].

mod codec;
mod error;
mod identity;
mod rdp;
pub mod thumbprint;
mod verify;

pub use codec::{
    mint, parse, percent_encode, redact, AlgName, HashAlg, MintRequest, Padding, ParsedToken,
    DEFAULT_TTL_SECS, MAX_COOKIE_BYTES, MAX_TTL_SECS, TOKEN_VERSION,
};
pub use error::{
    MessageFault, SignatureFault, TokenError, VerifyError,
    E_PROXY_COOKIE_AUTHENTICATION_ACCESS_DENIED, E_PROXY_COOKIE_BADPACKET,
    E_PROXY_RAP_ACCESSDENIED,
};
pub use identity::{write_secret_file, GeneratedPem, SigningIdentity, TrustedCert};
pub use rdp::{rdp_file, VMCONNECT_PORT};
pub use thumbprint::{Thumbprint, ThumbprintError};
pub use verify::{PaddingPolicy, Verifier, DEFAULT_SKEW_SECS};
