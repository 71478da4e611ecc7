"""Catalogue operations: meters, features, pricing units, plans and plan versions."""

from starlette.responses import Response

from api.errors import ApiError
from api.http import Call, Operation
from api.tenant import ADMIN, READERS
from domain.feature import FeatureSpec
from domain.meter import MeterSpec
from domain.plan import PlanSpec
from domain.plan_version import PlanVersionSpec
from domain.pricing_unit import PricingUnitSpec
from projections.views import (
    FeatureView,
    MeterView,
    PlanVersionView,
    PlanView,
    PricingUnitView,
)


def _resource(collection: str, path: str, define: str, spec: type, view: type, noun: str) -> list[Operation]:
    """Create, read by code and list: the same three operations for each kind of catalogue entry."""

    async def create(call: Call) -> Response:
        created = await call.command(getattr(call.ledger.catalogue, define), call.body)
        return await call.document(collection, id=created.id, status=201)

    async def read(call: Call) -> Response:
        return await call.document(collection, code=call.params["code"])

    async def listing(call: Call) -> Response:
        return await call.page(collection)

    return [
        Operation("POST", path, create, ADMIN, f"Create a {noun}", spec, view, status=201),
        Operation("GET", path, listing, READERS, f"List {noun}s", response=view, listing=True),
        Operation("GET", path + "/{code}", read, READERS, f"Read a {noun} by code", response=view),
    ]


async def publish_version(call: Call) -> Response:
    version = await call.command(call.ledger.catalogue.publish_plan_version, call.params["code"], call.body)
    return await call.document("plan_versions", id=version.id, status=201)


async def list_versions(call: Call) -> Response:
    await call.document("plans", code=call.params["code"])  # 404 for an unknown plan
    return await call.page("plan_versions", parent=call.params["code"], key="id")  # a version has an id, no code


async def read_version(call: Call) -> Response:
    number = call.params["number"]
    if not (number.isascii() and number.isdigit()):  # "²".isdigit(), but int("²") fails
        raise ApiError(404, f"no version {number!r}")
    return await call.document("plan_versions", code=f"{call.params['code']}/{int(number)}")


OPERATIONS = [
    *_resource("meters", "/v1/meters", "define_meter", MeterSpec, MeterView, "meter"),
    *_resource("features", "/v1/features", "define_feature", FeatureSpec, FeatureView, "feature"),
    *_resource("pricing_units", "/v1/pricing-units", "define_pricing_unit", PricingUnitSpec, PricingUnitView,
               "pricing unit"),
    *_resource("plans", "/v1/plans", "define_plan", PlanSpec, PlanView, "plan"),
    Operation("POST", "/v1/plans/{code}/versions", publish_version, ADMIN,
              "Publish a new immutable version of a plan", PlanVersionSpec, PlanVersionView, status=201),
    Operation("GET", "/v1/plans/{code}/versions", list_versions, READERS, "List a plan's versions",
              response=PlanVersionView, listing=True),
    Operation("GET", "/v1/plans/{code}/versions/{number}", read_version, READERS, "Read one version of a plan",
              response=PlanVersionView),
]
