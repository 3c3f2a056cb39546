/*
 * Test driver: what a pathologist does to a LabelSet in QuPath, done with QuPath's own code.
 *   args: IN.geojson EDITS.json OUT.geojson
 * EDITS: {"delete": [index...], "reclassify": {index: class or null}, "draw": [{"class", "xy": [[x, y]...]}]}
 * Reads IN with PathIO.readObjects, deletes, reclassifies (setPathClass), draws annotations
 * (ROIs.createPolygonROI + PathObjects.createAnnotationObject) and writes OUT with
 * PathIO.exportObjectsAsGeoJSON, the method behind File > Export objects as GeoJSON.
 */
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.ROIs

def objects = PathIO.readObjects(new File(args[0]).toPath())
def edits = GsonTools.getInstance().fromJson(new File(args[1]).getText('UTF-8'), Map)
(edits.reclassify ?: [:]).each { k, v ->
    objects[k as int].setPathClass(v == null ? null : PathClass.fromString(v as String))
}
def gone = (edits.delete ?: []).collect { it as int } as Set
def kept = []
objects.eachWithIndex { p, i -> if (!gone.contains(i)) kept << p }
for (d in (edits.draw ?: [])) {
    double[] xs = d.xy.collect { it[0] as double } as double[]
    double[] ys = d.xy.collect { it[1] as double } as double[]
    def roi = ROIs.createPolygonROI(xs, ys, ImagePlane.getDefaultPlane())
    kept << PathObjects.createAnnotationObject(roi, d['class'] == null ? null : PathClass.fromString(d['class'] as String))
}
PathIO.exportObjectsAsGeoJSON(new File(args[2]), kept, PathIO.GeoJsonExportOptions.FEATURE_COLLECTION)
println "kept ${kept.size()} of ${objects.size()} objects"
