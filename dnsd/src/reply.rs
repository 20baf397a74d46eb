//! The content of an answer, before it is framed into a DNS message.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Record;

/// What dnsd answers to one question: a response code, whether it speaks with
/// authority, and the records of each section.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The response code.
    pub code: ResponseCode,
    /// The AA flag: set for the local TLD and the special-use names dnsd answers itself.
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA of negative answers).
    pub authorities: Vec<Record>,
    /// The additional section (glue for NS answers).
    pub additionals: Vec<Record>,
}

impl Reply {
    /// An answer without records, with `code` and without authority: errors, and the
    /// base that other answers fill in.
    pub fn empty(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }

    /// A NOERROR answer given with authority.
    pub fn authoritative(answers: Vec<Record>) -> Self {
        Self {
            code: ResponseCode::NoError,
            authoritative: true,
            answers,
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}
