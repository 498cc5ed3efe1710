//! The table spec: one YAML document per pipeline. Parsing reports every
//! problem it can find at once, each with the dotted path of the field and the
//! line it sits on, so `tributary validate` can print `file:line: path: message`.

mod error;
mod event_time;
mod event_time_rules;
mod expression;
mod lines;
mod model;
mod parse;
mod reference;
mod scale_out;
mod select;
mod transform;
mod units;
mod validate;

pub use error::{Problem, Result, SpecError};
pub use event_time::{
    AggregateFunction, AggregationSpec, DedupSpec, EventTimeSpec, FeaturesSpec, OutputMode,
    SessionSpec, SlidingSpec, TumblingSpec, WINDOW_END, WINDOW_START, WindowKind, WindowSpec,
};
pub use expression::{BinaryOp, CastType, Expr, Function, Literal};
pub use model::*;
pub use parse::{parse_spec, parse_spec_file, problems_at};
pub use reference::{json_schema, reference_markdown};
pub use select::{INTERNAL_COLUMN_PREFIX, Select, SelectItem};
pub use transform::{ComputedColumns, EnrichSpec, JoinKind, ParsedTransform, TransformSpec};
pub use units::{ByteSize, HumanDuration};
