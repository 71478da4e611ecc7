"""The tenants' use cases: open a tenant, change its settings, issue and revoke its API keys."""

from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from domain.aggregate import Actor, acting
from domain.api_key import ApiKey, Role, new_secret, secret_hash, shown_prefix
from domain.application import TallyApplication
from domain.customer import Customer
from domain.errors import Conflict, Invalid, NotFound
from domain.tenant import Tenant, TenantChanges, TenantSettings


class KeyExists(Conflict):
    def __init__(self) -> None:
        super().__init__("that key is already in use")


class Tenants(TallyApplication):
    def open_tenant(self, by: Actor, settings: TenantSettings) -> Tenant:
        with acting(by):
            tenant = Tenant(settings=settings)
        self.save(tenant)
        return tenant

    def change_settings(self, by: Actor, tenant_id: UUID, changes: TenantChanges) -> Tenant:
        tenant = self.tenant(tenant_id)
        with acting(by):
            tenant.change_settings(changes)
        self.save(tenant)
        return tenant

    def tenant(self, tenant_id: UUID) -> Tenant:
        try:
            return self.repository.get(tenant_id)
        except AggregateNotFoundError:
            raise NotFound("tenant", str(tenant_id)) from None

    def issue_key(
        self, by: Actor, tenant_id: UUID, role: Role, customer: str | None = None, secret: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key, and its secret: the only time the secret is seen. A portal key names its customer."""
        self.tenant(tenant_id)
        if role == "portal":
            if customer is None:
                raise Invalid("customer", "a portal key is bound to one customer: give its external_id")
            try:
                self.repository.get(Customer.id_for(tenant_id, customer))
            except AggregateNotFoundError:
                raise Invalid("customer", f"no customer {customer!r}") from None
        elif customer is not None:
            raise Invalid("customer", f"only a portal key is bound to a customer, not a {role} key")
        secret = secret or new_secret(role)
        with acting(by):
            key = ApiKey(
                tenant_id=tenant_id, role=role, customer=customer,
                prefix=shown_prefix(secret), secret_hash=secret_hash(secret),
            )
        self.save_or(KeyExists(), key)
        return key, secret

    def revoke_key(self, by: Actor, tenant_id: UUID, key_id: UUID) -> ApiKey:
        key = self.key(tenant_id, key_id)
        with acting(by):
            key.revoke()
        self.save(key)
        return key

    def key(self, tenant_id: UUID, key_id: UUID) -> ApiKey:
        try:
            key = self.repository.get(key_id)
        except AggregateNotFoundError:
            key = None
        if not isinstance(key, ApiKey) or key.tenant_id != tenant_id:
            raise NotFound("api key", str(key_id))
        return key

    def keep_admin_key(self, by: Actor, tenant_id: UUID, secret: str) -> ApiKey:
        """Make `secret` (the operator's TALLY_API_KEY) an admin key of the tenant, or keep it one."""
        try:
            key = self.repository.get(ApiKey.create_id(secret_hash(secret)))
        except AggregateNotFoundError:
            return self.issue_key(by, tenant_id, "admin", secret=secret)[0]
        if key.tenant_id != tenant_id or key.role != "admin":
            raise KeyExists()
        with acting(by):
            key.reinstate()
        self.save(key)
        return key
