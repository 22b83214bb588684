//! Azure Resource Manager ids: parsing, canonical formatting and comparison.
//!
//! Every ARM id the operator reads (from a grant, from a policy, from an ARM response) goes
//! through [`ResourceId::parse`], so there is one definition of what a valid id is and one
//! definition of when two ids are the same.
//!
//! Shape: a root followed by zero or more provider sections.
//!
//! ```text
//! /subscriptions/{guid}[/resourceGroups/{name}]  /providers/{Namespace}/{type}/{name}[/{type}/{name}…]  …
//! /providers/Microsoft.Management/managementGroups/{name}                           (more sections may follow)
//! /providers/{Namespace}/{type}/{name}…                                              (tenant-level resources)
//! ```
//!
//! Azure compares ids case-insensitively, so equality and hashing here do too; formatting keeps
//! the caller's spelling of names and namespaces and writes the structural keywords
//! (`subscriptions`, `resourceGroups`, `providers`) in their canonical case.
//!
//! The parser is stricter than ARM in a few deliberate ways, because ids feed authorization
//! decisions (see the GrantPolicy docs): only ASCII letters, digits and `-._()~+@` may appear in
//! segments (no `%`, `*`, quotes or whitespace, so no encoded slashes or glob characters), and
//! `..` may not appear anywhere.

use std::fmt;
use std::hash::{Hash, Hasher};

use super::guid::is_guid;

/// Longest id we accept. Real ids are far shorter; the cap bounds memory and CEL cost.
pub const MAX_RESOURCE_ID_LEN: usize = 1024;

/// Why a string is not a valid ARM id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceIdError {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long; the limit is {MAX_RESOURCE_ID_LEN}")]
    TooLong { len: usize },
    #[error("must start with '/'")]
    MissingLeadingSlash,
    #[error("must not end with '/'")]
    TrailingSlash,
    #[error("must not contain '//' (an empty segment)")]
    EmptySegment,
    #[error("must not contain '..'")]
    DotDot,
    #[error("must not contain a '.' segment")]
    DotSegment,
    #[error("contains {0:?}, which never appears in an Azure resource id")]
    InvalidCharacter(char),
    #[error("must start with /subscriptions/ or /providers/, found '/{0}'")]
    UnknownRoot(String),
    #[error("subscription id '{0}' is not a GUID")]
    InvalidSubscriptionId(String),
    #[error("'{0}' must be followed by a name")]
    MissingName(String),
    #[error("expected '{expected}' after '{after}', found '{found}'")]
    UnexpectedSegment { after: String, expected: &'static str, found: String },
    #[error("provider namespace '{0}' must be followed by a resource type and name")]
    MissingResourceType(String),
    #[error("is {found}, expected {expected}")]
    WrongType { expected: String, found: String },
}

/// Where an id is rooted.
#[derive(Debug, Clone)]
pub enum Root {
    /// Tenant-level (`/providers/...` with no management group).
    Tenant,
    /// `/providers/Microsoft.Management/managementGroups/{name}`.
    ManagementGroup { name: String },
    /// `/subscriptions/{id}`.
    Subscription { subscription_id: String },
    /// `/subscriptions/{id}/resourceGroups/{name}`.
    ResourceGroup { subscription_id: String, resource_group: String },
}

/// One `/providers/{namespace}/{type}/{name}[/{type}/{name}…]` section.
#[derive(Debug, Clone)]
pub struct ProviderSection {
    pub namespace: String,
    /// `(type, name)` pairs, outermost first; never empty.
    pub resources: Vec<(String, String)>,
}

/// A parsed ARM id. Compares and hashes case-insensitively, as Azure does.
#[derive(Debug, Clone)]
pub struct ResourceId {
    root: Root,
    sections: Vec<ProviderSection>,
}

const MANAGEMENT_NAMESPACE: &str = "Microsoft.Management";
const MANAGEMENT_GROUPS: &str = "managementGroups";

fn eq_ic(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')' | '~' | '+' | '@')
}

impl ResourceId {
    /// Parses an ARM id. See the module docs for the accepted shape.
    pub fn parse(text: &str) -> Result<Self, ResourceIdError> {
        if text.is_empty() {
            return Err(ResourceIdError::Empty);
        }
        if text.len() > MAX_RESOURCE_ID_LEN {
            return Err(ResourceIdError::TooLong { len: text.len() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(ResourceIdError::MissingLeadingSlash);
        };
        if text.contains("..") {
            return Err(ResourceIdError::DotDot);
        }
        if let Some(c) = text.chars().find(|c| *c != '/' && !allowed_char(*c)) {
            return Err(ResourceIdError::InvalidCharacter(c));
        }
        if text.len() > 1 && text.ends_with('/') || text == "/" {
            return Err(ResourceIdError::TrailingSlash);
        }
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(ResourceIdError::EmptySegment);
        }
        if segments.contains(&".") {
            return Err(ResourceIdError::DotSegment);
        }
        Parser { segments: &segments, pos: 0 }.parse()
    }

    /// `/subscriptions/{subscription_id}`.
    pub fn subscription(subscription_id: &str) -> Self {
        ResourceId { root: Root::Subscription { subscription_id: subscription_id.to_owned() }, sections: Vec::new() }
    }

    /// `/subscriptions/{subscription_id}/resourceGroups/{resource_group}`.
    pub fn resource_group(subscription_id: &str, resource_group: &str) -> Self {
        ResourceId {
            root: Root::ResourceGroup {
                subscription_id: subscription_id.to_owned(),
                resource_group: resource_group.to_owned(),
            },
            sections: Vec::new(),
        }
    }

    /// This id with `/providers/{namespace}/{resource_type}/{name}` appended — e.g. a resource
    /// in a resource group, or an extension resource such as a role assignment on a scope.
    pub fn with_provider_resource(&self, namespace: &str, resource_type: &str, name: &str) -> Self {
        let mut id = self.clone();
        id.sections.push(ProviderSection {
            namespace: namespace.to_owned(),
            resources: vec![(resource_type.to_owned(), name.to_owned())],
        });
        id
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn sections(&self) -> &[ProviderSection] {
        &self.sections
    }

    /// The subscription GUID, when the id lives in a subscription.
    pub fn subscription_id(&self) -> Option<&str> {
        match &self.root {
            Root::Subscription { subscription_id } | Root::ResourceGroup { subscription_id, .. } => {
                Some(subscription_id)
            }
            _ => None,
        }
    }

    /// The resource group name, when the id lives in one.
    pub fn resource_group_name(&self) -> Option<&str> {
        match &self.root {
            Root::ResourceGroup { resource_group, .. } => Some(resource_group),
            _ => None,
        }
    }

    /// The management group name, when the id is rooted at one.
    pub fn management_group(&self) -> Option<&str> {
        match &self.root {
            Root::ManagementGroup { name } => Some(name),
            _ => None,
        }
    }

    /// The id's own name: the last resource name, or the root's name.
    pub fn name(&self) -> &str {
        if let Some((_, name)) = self.sections.last().and_then(|s| s.resources.last()) {
            return name;
        }
        match &self.root {
            Root::Tenant => "",
            Root::ManagementGroup { name } => name,
            Root::Subscription { subscription_id } => subscription_id,
            Root::ResourceGroup { resource_group, .. } => resource_group,
        }
    }

    /// The id's type as Azure writes it: `Microsoft.Storage/storageAccounts`,
    /// `Microsoft.Storage/storageAccounts/blobServices/containers`, or for roots
    /// `Microsoft.Resources/subscriptions`, `Microsoft.Resources/resourceGroups`,
    /// `Microsoft.Management/managementGroups`.
    pub fn resource_type(&self) -> String {
        if let Some(section) = self.sections.last() {
            let mut t = section.namespace.clone();
            for (ty, _) in &section.resources {
                t.push('/');
                t.push_str(ty);
            }
            return t;
        }
        match &self.root {
            Root::Tenant => "tenant".to_owned(),
            Root::ManagementGroup { .. } => format!("{MANAGEMENT_NAMESPACE}/{MANAGEMENT_GROUPS}"),
            Root::Subscription { .. } => "Microsoft.Resources/subscriptions".to_owned(),
            Root::ResourceGroup { .. } => "Microsoft.Resources/resourceGroups".to_owned(),
        }
    }

    /// True when this id's type equals `resource_type` (case-insensitive), e.g.
    /// `"Microsoft.Databricks/workspaces"`.
    pub fn is_type(&self, resource_type: &str) -> bool {
        eq_ic(&self.resource_type(), resource_type)
    }

    /// Ok when this id is of `resource_type`; otherwise a [`ResourceIdError::WrongType`].
    pub fn expect_type(&self, resource_type: &str) -> Result<(), ResourceIdError> {
        if self.is_type(resource_type) {
            Ok(())
        } else {
            Err(ResourceIdError::WrongType {
                expected: format!("a {resource_type} id"),
                found: format!("a {} id", self.resource_type()),
            })
        }
    }

    /// True when the id is a management group, subscription, resource group or resource —
    /// anything a role can be assigned at except the tenant root.
    pub fn is_assignable_scope(&self) -> bool {
        !matches!(self.root, Root::Tenant)
    }

    /// The id in lower case: the key two ids are compared by.
    pub fn normalized(&self) -> String {
        self.to_string().to_ascii_lowercase()
    }

    /// True when `self` is `other` or contains it (a role assigned at `self` applies at
    /// `other`). Compared segment-wise, so `rg-lake` does not contain `rg-lake-evil`.
    pub fn contains(&self, other: &ResourceId) -> bool {
        let outer = self.normalized();
        let inner = other.normalized();
        inner == outer || inner.starts_with(&format!("{outer}/"))
    }
}

struct Parser<'a> {
    segments: &'a [&'a str],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let s = self.segments.get(self.pos).copied();
        self.pos += 1;
        s
    }

    fn peek(&self) -> Option<&'a str> {
        self.segments.get(self.pos).copied()
    }

    fn name_after(&mut self, keyword: &str) -> Result<&'a str, ResourceIdError> {
        self.next().ok_or_else(|| ResourceIdError::MissingName(keyword.to_owned()))
    }

    fn parse(mut self) -> Result<ResourceId, ResourceIdError> {
        let first = self.peek().unwrap_or_default();
        let root = if eq_ic(first, "subscriptions") {
            self.pos += 1;
            let subscription_id = self.name_after(first)?;
            if !is_guid(subscription_id) {
                return Err(ResourceIdError::InvalidSubscriptionId(subscription_id.to_owned()));
            }
            match self.peek() {
                Some(seg) if eq_ic(seg, "resourceGroups") => {
                    self.pos += 1;
                    let resource_group = self.name_after(seg)?;
                    Root::ResourceGroup {
                        subscription_id: subscription_id.to_owned(),
                        resource_group: resource_group.to_owned(),
                    }
                }
                Some(seg) if !eq_ic(seg, "providers") => {
                    return Err(ResourceIdError::UnexpectedSegment {
                        after: subscription_id.to_owned(),
                        expected: "resourceGroups' or 'providers",
                        found: seg.to_owned(),
                    });
                }
                _ => Root::Subscription { subscription_id: subscription_id.to_owned() },
            }
        } else if eq_ic(first, "providers") {
            Root::Tenant
        } else {
            return Err(ResourceIdError::UnknownRoot(first.to_owned()));
        };

        let mut id = ResourceId { root, sections: Vec::new() };
        if let Root::ResourceGroup { resource_group, .. } = &id.root
            && let Some(seg) = self.peek()
            && !eq_ic(seg, "providers")
        {
            return Err(ResourceIdError::UnexpectedSegment {
                after: resource_group.clone(),
                expected: "providers",
                found: seg.to_owned(),
            });
        }

        while let Some(keyword) = self.next() {
            // Only reached at a section boundary: the checks above and below guarantee it.
            debug_assert!(eq_ic(keyword, "providers"));
            let namespace = self.name_after(keyword)?;
            let mut resources = Vec::new();
            while let Some(seg) = self.peek() {
                if eq_ic(seg, "providers") {
                    break;
                }
                self.pos += 1;
                let name = self.name_after(seg)?;
                resources.push((seg.to_owned(), name.to_owned()));
            }
            if resources.is_empty() {
                return Err(ResourceIdError::MissingResourceType(namespace.to_owned()));
            }
            // `/providers/Microsoft.Management/managementGroups/{mg}` at the start is a root.
            if matches!(id.root, Root::Tenant)
                && id.sections.is_empty()
                && eq_ic(namespace, MANAGEMENT_NAMESPACE)
                && eq_ic(&resources[0].0, MANAGEMENT_GROUPS)
                && resources.len() == 1
            {
                id.root = Root::ManagementGroup { name: resources[0].1.clone() };
                continue;
            }
            id.sections.push(ProviderSection { namespace: namespace.to_owned(), resources });
        }
        Ok(id)
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            Root::Tenant => {}
            Root::ManagementGroup { name } => {
                write!(f, "/providers/{MANAGEMENT_NAMESPACE}/{MANAGEMENT_GROUPS}/{name}")?
            }
            Root::Subscription { subscription_id } => write!(f, "/subscriptions/{subscription_id}")?,
            Root::ResourceGroup { subscription_id, resource_group } => {
                write!(f, "/subscriptions/{subscription_id}/resourceGroups/{resource_group}")?
            }
        }
        for section in &self.sections {
            write!(f, "/providers/{}", section.namespace)?;
            for (ty, name) in &section.resources {
                write!(f, "/{ty}/{name}")?;
            }
        }
        Ok(())
    }
}

impl PartialEq for ResourceId {
    fn eq(&self, other: &Self) -> bool {
        self.normalized() == other.normalized()
    }
}

impl Eq for ResourceId {}

impl Hash for ResourceId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.normalized().hash(state);
    }
}

impl std::str::FromStr for ResourceId {
    type Err = ResourceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for ResourceId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ResourceId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ResourceId::parse(&text)
            .map_err(|e| serde::de::Error::custom(format!("'{text}' is not a valid Azure resource id: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SUB: &str = "6f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";

    fn ok(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> ResourceIdError {
        ResourceId::parse(s).expect_err(s)
    }

    #[test]
    fn parses_the_shapes_azure_uses() {
        let ws = ok(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-analytics/providers/Microsoft.Databricks/workspaces/dbw-prod"
        ));
        assert_eq!(ws.subscription_id(), Some(SUB));
        assert_eq!(ws.resource_group_name(), Some("rg-analytics"));
        assert_eq!(ws.name(), "dbw-prod");
        assert!(ws.is_type("microsoft.databricks/WORKSPACES"));

        let container = ok(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/lake/blobServices/default/containers/raw"
        ));
        assert_eq!(container.resource_type(), "Microsoft.Storage/storageAccounts/blobServices/containers");
        assert_eq!(container.name(), "raw");

        let role_def = ok(&format!(
            "/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/ba92f5b4-2d11-453d-a403-e96b0029c9fe"
        ));
        assert!(role_def.is_type("Microsoft.Authorization/roleDefinitions"));
        assert_eq!(role_def.resource_group_name(), None);

        let mg = ok("/providers/Microsoft.Management/managementGroups/platform");
        assert_eq!(mg.management_group(), Some("platform"));
        assert!(mg.is_assignable_scope());
        assert!(mg.is_type("Microsoft.Management/managementGroups"));

        let tenant_role = ok("/providers/Microsoft.Authorization/roleDefinitions/ba92f5b4-2d11-453d-a403-e96b0029c9fe");
        assert!(!tenant_role.is_assignable_scope());

        let assignment = ok(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv/providers/Microsoft.Authorization/roleAssignments/05c5a614-a7d6-4502-b150-c2fb455033ff"
        ));
        assert_eq!(assignment.sections().len(), 2);
        assert!(assignment.is_type("Microsoft.Authorization/roleAssignments"));
    }

    #[test]
    fn compares_case_insensitively_and_formats_canonically() {
        let a = ok(&format!(
            "/SUBSCRIPTIONS/{SUB}/RESOURCEGROUPS/RG-Lake/PROVIDERS/Microsoft.Storage/storageAccounts/Lake"
        ));
        let b = ok(&format!(
            "/subscriptions/{}/resourcegroups/rg-lake/providers/microsoft.storage/storageaccounts/lake",
            SUB.to_uppercase()
        ));
        assert_eq!(a, b);
        assert_eq!(
            a.to_string(),
            format!("/subscriptions/{SUB}/resourceGroups/RG-Lake/providers/Microsoft.Storage/storageAccounts/Lake")
        );
    }

    #[test]
    fn containment_is_segment_wise() {
        let rg = ok(&format!("/subscriptions/{SUB}/resourceGroups/rg-lake"));
        let inside =
            ok(&format!("/subscriptions/{SUB}/resourceGroups/RG-LAKE/providers/Microsoft.Storage/storageAccounts/x"));
        let sibling = ok(&format!("/subscriptions/{SUB}/resourceGroups/rg-lake-evil"));
        assert!(rg.contains(&inside));
        assert!(rg.contains(&rg));
        assert!(!rg.contains(&sibling));
        assert!(!inside.contains(&rg));
    }

    #[test]
    fn rejects_malformed_ids_with_a_specific_error() {
        assert_eq!(err(""), ResourceIdError::Empty);
        assert_eq!(err("subscriptions/x"), ResourceIdError::MissingLeadingSlash);
        assert_eq!(err(&format!("/subscriptions/{SUB}/")), ResourceIdError::TrailingSlash);
        assert_eq!(err("/"), ResourceIdError::TrailingSlash);
        assert_eq!(err(&format!("/subscriptions/{SUB}//resourceGroups/x")), ResourceIdError::EmptySegment);
        assert_eq!(err(&format!("/subscriptions/{SUB}/resourceGroups/x/../y")), ResourceIdError::DotDot);
        assert_eq!(err(&format!("/subscriptions/{SUB}/resourceGroups/./y")), ResourceIdError::DotSegment);
        assert_eq!(err(&format!("/subscriptions/{SUB}/resourceGroups/a%2Fb")), ResourceIdError::InvalidCharacter('%'));
        assert_eq!(err(&format!("/subscriptions/{SUB}/resourceGroups/a b")), ResourceIdError::InvalidCharacter(' '));
        assert_eq!(err(&format!("/subscriptions/{SUB}/resourceGroups/a\0b")), ResourceIdError::InvalidCharacter('\0'));
        // Cyrillic 'а' (U+0430) looks like Latin 'a'.
        assert_eq!(
            err(&format!("/subscriptions/{SUB}/resourceGroups/r\u{0430}")),
            ResourceIdError::InvalidCharacter('\u{0430}')
        );
        assert_eq!(err("/tenants/x"), ResourceIdError::UnknownRoot("tenants".into()));
        assert_eq!(err("/subscriptions/not-a-guid"), ResourceIdError::InvalidSubscriptionId("not-a-guid".into()));
        assert_eq!(err("/subscriptions"), ResourceIdError::MissingName("subscriptions".into()));
        assert_eq!(
            err(&format!("/subscriptions/{SUB}/resourceGroups")),
            ResourceIdError::MissingName("resourceGroups".into())
        );
        assert!(matches!(err(&format!("/subscriptions/{SUB}/foo/bar")), ResourceIdError::UnexpectedSegment { .. }));
        assert!(matches!(
            err(&format!("/subscriptions/{SUB}/resourceGroups/rg/foo/bar")),
            ResourceIdError::UnexpectedSegment { .. }
        ));
        assert_eq!(
            err(&format!("/subscriptions/{SUB}/providers/Microsoft.Storage")),
            ResourceIdError::MissingResourceType("Microsoft.Storage".into())
        );
        assert_eq!(
            err(&format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts")),
            ResourceIdError::MissingName("storageAccounts".into())
        );
        assert!(matches!(err(&"/a".repeat(600)), ResourceIdError::TooLong { .. }));
    }

    #[test]
    fn expect_type_names_both_types() {
        let rg = ok(&format!("/subscriptions/{SUB}/resourceGroups/rg"));
        let e = rg.expect_type("Microsoft.Databricks/workspaces").expect_err("wrong type");
        assert_eq!(
            e.to_string(),
            "is a Microsoft.Resources/resourceGroups id, expected a Microsoft.Databricks/workspaces id"
        );
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9_()~+@-]{0,11}"
            .prop_filter("keywords are structural", |s| !s.eq_ignore_ascii_case("providers"))
    }

    fn guid() -> impl Strategy<Value = String> {
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string())
    }

    fn resource_id() -> impl Strategy<Value = ResourceId> {
        let root = prop_oneof![
            Just(Root::Tenant),
            segment().prop_map(|name| Root::ManagementGroup { name }),
            guid().prop_map(|subscription_id| Root::Subscription { subscription_id }),
            (guid(), segment())
                .prop_map(|(subscription_id, resource_group)| Root::ResourceGroup { subscription_id, resource_group }),
        ];
        let section = (segment(), prop::collection::vec((segment(), segment()), 1..4))
            .prop_map(|(namespace, resources)| ProviderSection { namespace, resources });
        (root, prop::collection::vec(section, 0..3))
            .prop_filter("a bare tenant root is not an id", |(root, sections)| {
                !(matches!(root, Root::Tenant) && sections.is_empty())
            })
            .prop_filter("a tenant-level managementGroups section is a root", |(root, sections)| {
                !(matches!(root, Root::Tenant)
                    && sections.first().is_some_and(|s| {
                        eq_ic(&s.namespace, MANAGEMENT_NAMESPACE)
                            && s.resources.len() == 1
                            && eq_ic(&s.resources[0].0, MANAGEMENT_GROUPS)
                    }))
            })
            .prop_map(|(root, sections)| ResourceId { root, sections })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn format_then_parse_round_trips(id in resource_id()) {
            let text = id.to_string();
            let parsed = ResourceId::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(parsed.to_string(), text.clone());
            prop_assert_eq!(&parsed, &id);
            // Case changes never change identity.
            let upper = ResourceId::parse(&text.to_ascii_uppercase())
                .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(upper, id);
        }

        #[test]
        fn junk_never_panics_and_accepted_input_is_canonical(text in "\\PC{0,80}|(/[a-zA-Z0-9./%*-]{0,12}){0,10}") {
            if let Ok(id) = ResourceId::parse(&text) {
                // Whatever is accepted re-parses to itself and differs from the input only in case.
                let again = ResourceId::parse(&id.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&again, &id);
                prop_assert_eq!(id.normalized(), text.to_ascii_lowercase());
            }
        }
    }
}
